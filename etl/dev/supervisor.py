"""Starting and stopping the pipeline's own processes: the bridge(s) and one Dramatiq worker per pool.

Used by the local default (``etl dev``) and by the end-to-end tests, so both run exactly what production runs:
``python -m workers.bridge`` and ``dramatiq etl.actors --queues <pool>``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from etl.dev.servers import free_port, signal_when_parent_dies
from etl.pools import dramatiq_command
from etl.stages import NAMES

DEFAULT_STOP_TIMEOUT_S = 30.0


@dataclass
class Pipeline:
    """The bridge(s) and worker pools, as child processes with logs under ``log_dir``."""

    env: Mapping[str, str]
    log_dir: Path
    pools: Sequence[str] = NAMES
    bridges: int = 1
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> Pipeline:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for pool in self.pools:
            self.start_one(f"worker-{pool}")
        for i in range(self.bridges):
            self.start_one(f"bridge-{i}")
        return self

    def start_one(self, name: str) -> None:
        """(Re)start one process by name: ``bridge-N`` or ``worker-<pool>``."""
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        # Each process gets its own port for health and metrics, kept across restarts.
        port = self.ports.setdefault(name, free_port())
        if name.startswith("bridge"):
            argv = [sys.executable, "-m", "workers.bridge"]
            env["HEALTH_PORT"] = str(port)
        else:
            env["METRICS_PORT"] = str(port)
            argv, extra = dramatiq_command(name.removeprefix("worker-"), env)
            env.update(extra)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True,
                                                # Orphaned, they stop as on a SIGTERM: gracefully, losing nothing.
                                                preexec_fn=signal_when_parent_dies(signal.SIGTERM))

    def kill(self, name: str) -> None:
        """SIGKILL a process and all of its children (a Dramatiq worker forks its processes)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S, *, ordered: bool = True) -> dict[str, int | None]:
        """Stop in order: bridges first (they ack what they enqueued), then the workers (they finish their
        in-flight messages). ``ordered=False`` sends SIGTERM to every process at once instead, as an orchestrator
        stopping a whole deployment does. Returns each process's exit code; anything still running at the
        deadline is killed.
        """
        bridges = [n for n in self.procs if n.startswith("bridge")]
        workers = [n for n in self.procs if n not in bridges]
        for group in (bridges, workers) if ordered else ([*bridges, *workers],):
            self._terminate(group, timeout_s)
        return {name: proc.returncode for name, proc in self.procs.items()}

    def _terminate(self, names: Sequence[str], timeout_s: float) -> None:
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in names:
            try:
                self.procs[name].wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
