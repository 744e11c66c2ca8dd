"""What one ``etl dev`` run holds around its stack: the data directory's lock (one stack per directory, ``--clean``)
and the stop signals (the first stops, later ones only hurry)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from etl.dev.session import LOCK_FILE, StopSignals, locked_data_dir, surviving_hangup
from etl.errors import EtlError


def fill(data_dir: Path) -> None:
    """What a stopped run leaves: server directories, logs, a file."""
    (data_dir / "nats" / "jetstream").mkdir(parents=True)
    (data_dir / "nats" / "jetstream" / "msgs").write_text("events")
    (data_dir / "logs").mkdir()
    (data_dir / "logs" / "bridge-0.log").write_text("log")
    (data_dir / "notes.txt").write_text("x")


def test_the_directory_is_created_and_its_data_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / ".etl-dev"
    with locked_data_dir(data_dir, clean=False) as held:
        assert held == data_dir and data_dir.is_dir()
        fill(data_dir)
    with locked_data_dir(data_dir, clean=False):
        assert (data_dir / "nats" / "jetstream" / "msgs").read_text() == "events"  # a restart resumes


def test_a_second_run_on_the_same_directory_fails_clearly(tmp_path: Path) -> None:
    with locked_data_dir(tmp_path, clean=False):
        with pytest.raises(EtlError, match=rf"another etl dev is running with {tmp_path}; .*--data-dir"):
            with locked_data_dir(tmp_path, clean=False):
                pytest.fail("entered a directory another run holds")


def test_another_directory_is_not_held(tmp_path: Path) -> None:
    with locked_data_dir(tmp_path / "one", clean=False), locked_data_dir(tmp_path / "two", clean=False):
        pass


def test_clean_does_not_touch_a_directory_another_run_holds(tmp_path: Path) -> None:
    with locked_data_dir(tmp_path, clean=False):
        fill(tmp_path)
        with pytest.raises(EtlError):
            with locked_data_dir(tmp_path, clean=True):
                pass
        assert (tmp_path / "nats" / "jetstream" / "msgs").exists()


def test_clean_empties_the_directory_but_not_what_a_link_points_to(tmp_path: Path) -> None:
    data_dir, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    data_dir.mkdir()
    fill(data_dir)
    (data_dir / "linked").symlink_to(outside, target_is_directory=True)
    with locked_data_dir(data_dir, clean=True):
        assert [p.name for p in data_dir.iterdir()] == [LOCK_FILE]
    assert (outside / "keep.txt").read_text() == "keep"


def test_the_lock_is_released_after_the_run(tmp_path: Path) -> None:
    with locked_data_dir(tmp_path, clean=False):
        pass
    with pytest.raises(RuntimeError):
        with locked_data_dir(tmp_path, clean=False):
            raise RuntimeError("the stack failed")
    with locked_data_dir(tmp_path, clean=False):  # neither left it held
        pass


# --- stop signals ---

def test_the_first_stop_signal_interrupts_and_later_ones_only_hurry() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    signals = StopSignals()
    signals.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        assert not signals.hurry
        signal.raise_signal(signal.SIGHUP)  # does not interrupt the shutdown
        assert signals.hurry
    finally:
        signals.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_closed_terminal_does_not_interrupt_the_shutdown() -> None:
    said: list[str] = []

    def say(text: str) -> None:
        if text == "hung up":
            raise OSError(5, "Input/output error")
        said.append(text)

    safe = surviving_hangup(say)
    safe("hung up")
    safe("stopping the workers")
    assert said == ["stopping the workers"]
