"""The graph sink: Cypher text, rows, and its two backends (Neo4j, FalkorDB)."""
