"""Process entry points: the bridge and the worker pools."""
