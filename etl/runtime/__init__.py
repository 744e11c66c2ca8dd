"""Process runtime: metrics, logs, Redis durability, the event loop thread, GC and worker set-up."""
