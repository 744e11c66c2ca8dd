"""What one ``etl dev`` run holds around its stack: the stop signals, the data directory's lock, and the last
guard against leaving a process behind.

A stop signal (Ctrl-C, SIGTERM, a hang-up) first raises ``KeyboardInterrupt`` in the main thread; from then on
signals only set ``StopSignals.hurry``, so the ordered shutdown always runs to its end.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from etl.errors import EtlError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOCK_FILE = "etl-dev.lock"
REAP_TIMEOUT_S = 5.0

Say = Callable[[str], None]


class StopSignals:
    """The first stop signal raises ``KeyboardInterrupt``; later ones only set ``hurry`` (stop waiting, shorten
    timeouts), so a second Ctrl-C can never cut the shutdown short and leave processes behind. The handlers print
    nothing: a write from a handler could interrupt a write of the main code."""

    def __init__(self) -> None:
        self._previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        self.hurry = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._first)

    def stopping(self) -> None:
        """From now on a stop signal hurries the shutdown instead of interrupting it."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._again)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _first(self, signum: int, frame: FrameType | None) -> None:
        self.stopping()
        raise KeyboardInterrupt

    def _again(self, signum: int, frame: FrameType | None) -> None:
        self.hurry = True


@contextmanager
def locked_data_dir(data_dir: Path, *, clean: bool) -> Iterator[Path]:
    """Hold the data directory for this run (one stack per directory); ``clean`` empties it first.
    Raises ``EtlError`` when another ``etl dev`` holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EtlError(f"another etl dev is running with {data_dir}; stop it or use another --data-dir") from None
        if clean:
            for child in data_dir.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        yield data_dir


def reap_children(timeout_s: float = REAP_TIMEOUT_S) -> int:
    """Terminate (then kill) any child process still running: the last guard against leaving one behind, e.g.
    when a signal arrived while one was being started. Returns how many there were."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    return len(children)


def surviving_hangup(say: Say) -> Say:
    """``say`` that ignores a closed terminal, so a hang-up cannot interrupt the shutdown."""

    def safe(text: str) -> None:
        try:
            say(text)
        except OSError:
            pass

    return safe


