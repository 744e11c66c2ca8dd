"""The pipeline core: the event contract, validation, enrichment, the bridge, poison isolation, the
dead-letter store."""
