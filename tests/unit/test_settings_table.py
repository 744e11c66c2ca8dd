"""The README's configuration table is the one generated from the settings' declaration."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from etl.config import ENV_VARS, Settings
from etl.settings_table import (
    END_MARKER,
    REGENERATE,
    START_MARKER,
    generated_section,
    markdown_table,
    section,
    with_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_generated_one() -> None:
    assert section(README.read_text()) == generated_section(), (
        f"README.md's configuration table differs from etl/config.py's declaration: run `{REGENERATE}`")


def test_the_table_has_one_row_per_setting_with_its_default() -> None:
    rows = markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == list(ENV_VARS)
    defaults = Settings()
    assert f"| `{defaults.max_batch_size}` |" in rows[ENV_VARS.index("MAX_BATCH_SIZE")]
    assert "| `true` |" in rows[ENV_VARS.index("REDIS_WAIT_AOF")]
    assert "| (none) |" in rows[ENV_VARS.index("REDIS_SENTINELS")]
    assert len(rows) == len(fields(Settings))


def test_writing_the_table_replaces_only_what_is_between_the_markers() -> None:
    readme = f"# Title\n\ntext\n{START_MARKER}\n| old |\n{END_MARKER}\n\nmore text\n"
    written = with_table(readme)
    assert written == f"# Title\n\ntext\n{START_MARKER}\n{generated_section()}{END_MARKER}\n\nmore text\n"
    assert with_table(written) == written
    assert with_table(f"{START_MARKER}\n{END_MARKER}\n") == f"{START_MARKER}\n{generated_section()}{END_MARKER}\n"


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="settings:start"):
        with_table("# no table here\n")
