"""Security event enrichment pipeline."""
