"""What a lookup load tells the operator in its log line: the STIX indicators it read but does not match, which
no other counter shows, beside the malformed lines."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from etl.lookups.live import LiveLookups
from etl.lookups.sources import load_intel, table_sources


def stix(pattern: str, **extra: str) -> dict[str, str]:
    return {"type": "indicator", "pattern": pattern, "pattern_type": "stix", **extra}


def test_the_load_s_log_line_counts_stix_indicators_unsupported_or_outside_their_window(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    objects = [stix("[ipv4-addr:value = '192.0.2.1']"),
               stix("[url:value = 'http://x.example/']"),  # unsupported
               stix("[domain-name:value LIKE '%.example']"),  # unsupported
               stix("[ipv4-addr:value = '192.0.2.2']", valid_until="2000-01-01T00:00:00Z")]  # expired
    (tmp_path / "bundle.json").write_bytes(orjson.dumps({"type": "bundle", "objects": objects}))
    loaded = load_intel((str(tmp_path),))
    assert (loaded.entries, loaded.skipped, loaded.unsupported, loaded.outside_validity) == (1, 0, 2, 1)

    caplog.set_level(logging.INFO, logger="etl.lookups.live")
    live = LiveLookups(table_sources(intel_paths=[str(tmp_path)]), 0)
    assert live.check() == ["intel"]
    (line,) = [r for r in caplog.records if "loaded" in r.getMessage()]
    assert line.getMessage().endswith(
        "(0 malformed lines skipped; STIX indicators not matched: 2 unsupported, 1 outside their validity window)")
    assert (line.__dict__["unsupported"], line.__dict__["outside_validity"]) == (2, 1)


def test_a_load_with_nothing_passed_over_says_only_what_it_skipped(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("192.0.2.1\n")
    assert load_intel((str(tmp_path),)).passed_over() == ""
