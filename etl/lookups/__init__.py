"""Lookup tables that add context to an event: pure data structures and the loaders that fill them from files.

One concept a module: ``prefixes`` (an immutable CIDR table), ``assets`` (the asset inventory), ``geoip``
(country and network operator from MaxMind databases), ``feeds`` (indicator feeds read from files), ``candidates``
(what of an event is looked up), ``indicators`` (the index they are matched in), ``tables`` (one snapshot of
them all, what a batch is enriched with), ``context`` (an event's lookup fields from a snapshot), ``badlines``
(how a file's malformed lines are reported) and ``csvrows`` (which rows of a CSV file hold data); and keeping
them current in a worker: ``names`` (the tables' names), ``changes`` (whether a table's files changed),
``sources`` (how each table is loaded from its files) and ``live`` (the snapshot in use, reloaded and swapped on
a thread). Nothing here reads settings: callers pass the paths.
"""
