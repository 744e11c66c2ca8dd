"""Only ``etl/natsio/internals.py`` may touch nats-py's private attributes: everywhere else in ``etl/`` uses the
public API, so a nats-py upgrade can break at most the one module that checks itself at import."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parents[2]
SEAM = ROOT / "etl" / "natsio" / "internals.py"
# Our own objects' private attributes, through their own methods, share names with nats-py's (``_pending``, ...).
OWN_RECEIVERS = frozenset({"self", "cls"})
REFLECTION = frozenset({"getattr", "setattr", "hasattr", "delattr"})


@cache
def nats_private_names() -> frozenset[str]:
    """Every ``_name`` (not dunder) nats-py's own source defines or uses: methods, attributes, module globals."""
    found: set[str] = set()
    for path in Path(nats.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, ast.Name):
                found.add(node.id)
    return frozenset(n for n in found if n.startswith("_") and not n.startswith("__") and n != "_")


def private_nats_uses(source: str) -> Iterator[tuple[int, str]]:
    """(line, code) of every use in ``source`` of a name from ``nats_private_names``: as an attribute of anything
    but ``self``/``cls``, as a string given to ``getattr`` and its kin, or imported from a ``nats`` module."""
    private = nats_private_names()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in private:
            if not (isinstance(node.value, ast.Name) and node.value.id in OWN_RECEIVERS):
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in REFLECTION:
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in private:
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nats":
            for alias in node.names:
                if alias.name.startswith("_"):
                    yield node.lineno, f"from {node.module} import {alias.name}"


def test_no_module_but_the_seam_touches_nats_py_internals() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {code}"
             for path in sorted((ROOT / "etl").rglob("*.py")) if path != SEAM
             for line, code in private_nats_uses(path.read_text(encoding="utf-8"))]
    assert not found, "nats-py internals used outside etl/natsio/internals.py (add a hook there):\n" + "\n".join(found)


def test_the_check_sees_each_way_of_reaching_in() -> None:
    source = """
from nats.aio.client import _CRLF_
async def f(nc, sub, m, self):
    await nc._send_command(b"")
    await self._nc._flush_pending()
    sid = getattr(sub, "_id", None)
    m._ackd = True
    self._pending = []  # our own attribute, named like one of nats-py's
    m.reply, sub.subject, nc.is_closed  # public
"""
    assert sorted(line for line, _ in private_nats_uses(source)) == [2, 4, 5, 6, 7]


def test_the_seam_itself_is_seen_using_the_hooks() -> None:
    """Guards the check against going blind (e.g. nats-py renaming everything): the seam must show up."""
    codes = {code for _, code in private_nats_uses(SEAM.read_text(encoding="utf-8"))}
    assert {"nc._send_command", "nc._flush_pending", "nc._process_msg", "sub._id", "m._ackd"} <= codes
