"""Whether a lookup table's files changed since it was last loaded: pure decisions on file signatures, apart from
the I/O that takes them (``etl.lookups.sources``).

A file's signature is what ``os.stat`` says of it that changes when it is rewritten or replaced: its modification
time (ns), its size and its inode. The inode catches a file renamed over the old one even when the two have the
same size and the clock's tick hides the new mtime. A table's signature lists each of its files with its
signature, in order: a directory contributes its file list, so a feed added to or removed from it is a change too;
a path that does not exist is listed with ``None``, so that its appearance is one.

A table is loaded when its signature differs from the one its last load *tried*, whether that load succeeded or
failed: a file that fails to load is tried again (and its error logged again) only once it changes again. A load
during which the files changed (a writer still at work) is discarded, to be tried at the next check: it may have
read half a file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What identifies one version of a file."""

    mtime_ns: int
    size: int
    inode: int


# Each file of a table, by path, in the order loaded; ``None`` for a path that does not exist (or vanished).
TableSignature = tuple[tuple[str, FileSignature | None], ...]


def newest_mtime_s(signature: TableSignature) -> float | None:
    """Unix time (s) of the newest file of ``signature``; ``None`` when it has no file that exists."""
    times = [sig.mtime_ns for _, sig in signature if sig is not None]
    return max(times) / 1e9 if times else None


@dataclass(slots=True)
class TableWatch:
    """What is known of one table's files: the signature its last counted load tried (``None``: none yet)."""

    tried: TableSignature | None = None

    def due(self, seen: TableSignature) -> bool:
        """Whether files with signature ``seen`` are to be loaded: they are not those last tried."""
        return seen != self.tried

    def settle(self, before: TableSignature, after: TableSignature) -> bool:
        """Whether a load that began on files signed ``before`` and ended on ``after`` counts: the files did not
        change under it. When it counts, ``before`` is what was tried."""
        if before != after:
            return False
        self.tried = before
        return True

