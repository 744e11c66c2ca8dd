"""Cross-cutting behaviour of the worker pools, as Dramatiq middleware."""
