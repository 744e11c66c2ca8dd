"""The local default (``etl dev``): the servers it starts, their ports, the generator, progress."""
