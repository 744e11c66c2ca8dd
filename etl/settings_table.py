"""The README's configuration table, generated from the settings' declaration (``etl.config.Settings``).

``python -m etl.settings_table`` prints the table; ``python -m etl.settings_table --write README.md`` puts it
between the README's markers. ``tests/unit/test_settings_table.py`` fails when the README's copy differs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from etl.config import Settings
from etl.credentials import file_var
from etl.envvalues import declaration

START_MARKER = "<!-- settings:start -->"
END_MARKER = "<!-- settings:end -->"
REGENERATE = "python -m etl.settings_table --write README.md"
HEADER = ("| variable | default | meaning |", "|---|---|---|")
NO_DEFAULT = "(none)"
NOTE = f"<!-- generated from etl/config.py: {REGENERATE} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """One row per setting, in declaration order: variable (a secret's with its ``_FILE``), default, help. Ends
    with a newline."""
    rows = list(HEADER)
    for f in fields(Settings):
        declared = declaration(f)
        default = "" if f.default is MISSING or f.default is None else declared.text(f.default)
        shown = declared.shown_default or (f"`{default}`" if default else NO_DEFAULT)
        variable = f"`{declared.var}`, `{file_var(declared.var)}`" if declared.secret else f"`{declared.var}`"
        rows.append(f"| {variable} | {_cell(shown)} | {_cell(declared.help)} |")
    return "\n".join(rows) + "\n"


def generated_section() -> str:
    """What goes between the README's markers: a note saying how to regenerate it, then ``markdown_table()``."""
    return f"{NOTE}\n{markdown_table()}"


def section(readme: str) -> str:
    """The text between the markers (the markers' own lines excluded). Raises ``ValueError`` without them."""
    start, end = readme.find(START_MARKER), readme.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the README lacks {START_MARKER} ... {END_MARKER}")
    return readme[readme.index("\n", start) + 1:end]


def with_table(readme: str) -> str:
    """``readme`` with ``generated_section()`` between its markers. Raises ``ValueError`` without them."""
    old = section(readme)
    at = readme.index("\n", readme.index(START_MARKER)) + 1
    return readme[:at] + generated_section() + readme[at + len(old):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl.settings_table", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", type=Path, help="replace the table between the markers")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(markdown_table())
        return 0
    args.write.write_text(with_table(args.write.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
