"""Sinks: where enriched batches go. Each module holds one sink behind the ``Sink`` interface."""
