"""Whether a lookup table's files changed since it was last loaded: pure decisions on file signatures, apart from
the I/O that takes them (``etl.lookups.sources``).

A file's signature is what ``os.stat`` says of it that changes when it is rewritten or replaced: its modification
time (ns), its size and its inode. The inode catches a file renamed over the old one even when the two have the
same size and the clock's tick hides the new mtime. A table's signature lists each of its files with its
signature, in order: a directory contributes its file list, so a feed added to or removed from it is a change too;
a path that does not exist is listed with ``None``, so that its appearance is one.

A table is loaded when its signature differs from the one its last load *tried*. A load that failed is tried
again on the same files too, after a backoff (``retry_after_checks``): a failure may have nothing to do with the
files (memory, descriptors, a network mount's I/O error), and a process that gave up until someone edits the file
would enrich without the table for good. Its error is logged once per version of the files, not per try. A load
during which the files changed (a writer still at work) is discarded, to be tried at the next check: it may have
read half a file.
"""

from __future__ import annotations

from dataclasses import dataclass

# The most checks a failing table waits between two tries: the wait doubles from one check up to this, so that a
# table whose load costs much (a million indicators) and fails every time costs little, and one that failed for a
# passing cause is loaded within this many checks of it passing.
RETRY_MAX_CHECKS = 32


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


def retry_after_checks(failures: int) -> int:
    """How many checks to wait before trying again files that failed to load ``failures`` (>= 1) times in a row:
    1, 2, 4, ... up to ``RETRY_MAX_CHECKS``."""
    return min(1 << min(failures - 1, RETRY_MAX_CHECKS.bit_length()), RETRY_MAX_CHECKS)


@dataclass(slots=True)
class TableWatch:
    """What is known of one table's files: the signature its last counted load tried (``None``: none yet), how
    many loads of those files failed in a row, and how many checks passed since the last of them."""

    tried: TableSignature | None = None
    failures: int = 0
    waited: int = 0

    @property
    def failing(self) -> bool:
        """Whether the files last tried failed to load (the table in use, if any, is older than them)."""
        return self.failures > 0

    def due(self, seen: TableSignature) -> bool:
        """Whether files with signature ``seen`` are to be loaded: they are not those last tried, or those failed
        and their backoff is over. Each call is one check: it counts towards the backoff."""
        if seen != self.tried:
            return True
        if not self.failing:
            return False
        self.waited += 1
        return self.waited >= retry_after_checks(self.failures)

    def settle(self, before: TableSignature, after: TableSignature) -> bool:
        """Whether a load that began on files signed ``before`` and ended on ``after`` counts: the files did not
        change under it. When it counts, ``before`` is what was tried; report its outcome with ``loaded`` or
        ``failed``."""
        if before != after:
            return False
        if before != self.tried:
            self.failures = 0
        self.tried = before
        self.waited = 0
        return True

    def loaded(self) -> None:
        """The counted load succeeded."""
        self.failures = 0

    def failed(self) -> bool:
        """The counted load failed; whether it is the first failure of these files (the one to log and count)."""
        self.failures += 1
        return self.failures == 1

