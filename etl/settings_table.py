"""The configuration tables, generated from the settings' declaration (``etl.config.Settings``).

Two documents carry one: ``docs/configuration.md`` every setting, the README only those declared ``essential``
(what most deployments set), so that the README stays short. ``python -m etl.settings_table`` prints the full
table; ``python -m etl.settings_table --write .`` puts each table between its document's markers.
``tests/unit/test_settings_table.py`` fails when either copy differs.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from etl.config import Settings
from etl.credentials import file_var
from etl.envvalues import declaration

START_MARKER = "<!-- settings:start -->"
END_MARKER = "<!-- settings:end -->"
REGENERATE = "python -m etl.settings_table --write ."
HEADER = ("| variable | default | meaning |", "|---|---|---|")
NO_DEFAULT = "(none)"
NOTE = f"<!-- generated from etl/config.py: {REGENERATE} -->"
# Each document with a table, from the repository's root, and whether it lists only the essential settings.
DOCUMENTS = {"README.md": True, "docs/configuration.md": False}
DOCS = "docs/"
# The help texts link from the repository's root (``docs/x.md``, ``README.md#y``); from a document in ``docs/``,
# ``x.md`` and ``../README.md#y``.
_ROOT_LINK = re.compile(r"\]\((?!https?:|#)([^)]+)\)")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(f: Field[Any]) -> str:
    declared = declaration(f)
    default = "" if f.default is MISSING or f.default is None else declared.text(f.default)
    shown = declared.shown_default or (f"`{default}`" if default else NO_DEFAULT)
    variable = f"`{declared.var}`, `{file_var(declared.var)}`" if declared.secret else f"`{declared.var}`"
    return f"| {variable} | {_cell(shown)} | {_cell(declared.help)} |"


def markdown_table(*, essential_only: bool = False) -> str:
    """One row per setting (or per essential one), in declaration order: variable (a secret's with its
    ``_FILE``), default, help. Ends with a newline."""
    chosen = [f for f in fields(Settings) if declaration(f).essential or not essential_only]
    return "\n".join([*HEADER, *(_row(f) for f in chosen)]) + "\n"


def generated_section(*, essential_only: bool = False, in_docs: bool = False) -> str:
    """What goes between a document's markers: a note saying how to regenerate it, then its table, whose links
    are made relative to ``docs/`` when the document is in there (``in_docs``)."""
    table = markdown_table(essential_only=essential_only)
    return f"{NOTE}\n{_ROOT_LINK.sub(_from_docs, table) if in_docs else table}"


def _from_docs(link: re.Match[str]) -> str:
    target = link.group(1)
    return f"]({target.removeprefix(DOCS) if target.startswith(DOCS) else '../' + target})"


def section(text: str) -> str:
    """The text between the markers (the markers' own lines excluded). Raises ``ValueError`` without them."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the document lacks {START_MARKER} ... {END_MARKER}")
    return text[text.index("\n", start) + 1:end]


def with_table(text: str, *, essential_only: bool = False, in_docs: bool = False) -> str:
    """``text`` with ``generated_section()`` between its markers. Raises ``ValueError`` without them."""
    old = section(text)
    at = text.index("\n", text.index(START_MARKER)) + 1
    return text[:at] + generated_section(essential_only=essential_only, in_docs=in_docs) + text[at + len(old):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl.settings_table", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="ROOT", type=Path,
                        help=f"replace the tables between the markers of {' and '.join(DOCUMENTS)} under ROOT")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(markdown_table())
        return 0
    for name, essential_only in DOCUMENTS.items():
        path = args.write / name
        path.write_text(with_table(path.read_text(), essential_only=essential_only, in_docs=name.startswith(DOCS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
