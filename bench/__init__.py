"""Benchmarks that print figures: ``bench/run`` (throughput, latency, cost, scaling, against baselines measured
in the same run) and ``bench/overload.py`` (memory under sustained overload)."""
