"""Process set-up that must happen before anything imports ``prometheus_client``: keep this module import-free.

In a Dramatiq worker process, our metrics must live in Dramatiq's multiprocess directory so that the pool's
exposition server, which reads that directory, serves them beside Dramatiq's own. ``prometheus_client`` picks its
storage when it is first imported, so ``etl.actors`` calls ``prepare()`` first thing.
"""

from __future__ import annotations

import os
import sys
import tempfile


def is_worker_process() -> bool:
    """True under the ``dramatiq`` command (``dramatiq ...`` or ``python -m dramatiq ...``)."""
    program = sys.argv[0] if sys.argv else ""
    return os.path.basename(program) == "dramatiq" or program.endswith(os.path.join("dramatiq", "__main__.py"))


def prepare() -> None:
    if is_worker_process() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        directory = os.environ.get("dramatiq_prom_db") or os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")
        os.makedirs(directory, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def service_name() -> str:
    """The name every log line gives its process (ECS ``service.name``): ``worker-<queues>`` under Dramatiq (from
    its ``--queues``), else the program's name."""
    args = sys.argv[1:]
    if is_worker_process():
        for flag in ("--queues", "-Q"):
            if flag in args and args.index(flag) + 1 < len(args):
                return "worker-" + args[args.index(flag) + 1]
        return "worker"
    return os.path.basename(sys.argv[0]) if sys.argv else "etl"
