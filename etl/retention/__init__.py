"""Retention: expired events leave the graph and the table, a bounded batch at a time, in the background.

``runs`` holds the pure part (how long a run goes on, when the next one starts), ``task`` the thread a worker
process runs it on, sharing one Redis lease with the pool's other processes and replicas. What a batch removes,
and how, belongs to each sink (``etl.sinks.graph.expiry``, ``etl.sinks.timescale_retention``); the worker starts
the task from ``etl.middleware.retention``.
"""
