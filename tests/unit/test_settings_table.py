"""The configuration tables (README: the essential settings; docs/configuration.md: all) are the ones generated
from the settings' declaration."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from etl.config import ENV_VARS, Settings
from etl.envvalues import declaration
from etl.settings_table import (
    DOCUMENTS,
    END_MARKER,
    REGENERATE,
    START_MARKER,
    generated_section,
    main,
    markdown_table,
    section,
    with_table,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_each_documents_table_is_the_generated_one(name: str) -> None:
    expected = generated_section(essential_only=DOCUMENTS[name], in_docs=name.startswith("docs/"))
    assert section((ROOT / name).read_text()) == expected, (
        f"{name}'s configuration table differs from etl/config.py's declaration: run `{REGENERATE}`")


def test_the_readme_lists_the_essential_settings_and_links_the_rest() -> None:
    readme = section((ROOT / "README.md").read_text())
    essential = [declaration(f).var for f in fields(Settings) if declaration(f).essential]
    assert {"NATS_URL", "REDIS_URL", "PG_HOST", "NEO4J_URI", "AF_ENV"} <= set(essential)
    assert [row.split("`")[1] for row in readme.splitlines()[3:]] == essential
    assert "MAX_BATCH_SIZE" not in readme
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text()


def test_links_in_docs_are_relative_to_docs(tmp_path: Path) -> None:
    for name in DOCUMENTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"{START_MARKER}\n{END_MARKER}\n")
    assert main(["--write", str(tmp_path)]) == 0
    full = (tmp_path / "docs/configuration.md").read_text()
    assert "](operations.md#retention)" in full and "](docs/" not in full
    assert "](docs/operations.md#retention)" in (tmp_path / "README.md").read_text()


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


def test_links_to_the_readme_from_docs_go_up_one_level(tmp_path: Path) -> None:
    for name in DOCUMENTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"{START_MARKER}\n{END_MARKER}\n")
    main(["--write", str(tmp_path)])
    assert "](../README.md#reliability)" in (tmp_path / "docs/configuration.md").read_text()
    assert "](README.md#reverse-dns)" in (tmp_path / "README.md").read_text()
