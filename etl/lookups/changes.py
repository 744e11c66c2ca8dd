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
would enrich without the table for good. Its error is logged once per version of the files, not per try.

A load during which a file changed in place (a writer still at work: same inode, new mtime or size) is discarded,
to be tried at the next check: it may have read half a file. A file renamed over (a new inode) is not such a
change: whether the loader opened it before or after the rename, it read one whole version of it, so the load
counts, and the next check loads the newer files. Otherwise a feed renamed over more often than it takes to load
would never load. (A file deleted and then written anew under its name also has a new inode, and may be read
half written: such a load is in use until the next check reloads it. Write beside and rename.)
"""

from __future__ import annotations

from dataclasses import dataclass

# The most checks a failing table waits between two tries: the wait doubles from one check up to this, so that a
# table whose load costs much (a million indicators) and fails every time costs little, and one that failed for a
# passing cause is loaded within this many checks of it passing.
RETRY_MAX_CHECKS = 32
# Loads discarded in a row, for files changed in place under them, after which it is a warning: one is a writer
# that happened to be at work, this many a writer that rewrites the files faster than they load, which never load.
DISCARDS_WARNED_AFTER = 3


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


def renamed_over(before: TableSignature, after: TableSignature) -> bool:
    """Whether ``after`` lists the same files as ``before``, each the same or replaced by another inode (renamed
    over): a load between them read one whole version of each file."""
    if [path for path, _ in before] != [path for path, _ in after]:
        return False
    return all(old == new or (old is not None and new is not None and old.inode != new.inode)
               for (_, old), (_, new) in zip(before, after, strict=True))


def retry_after_checks(failures: int) -> int:
    """How many checks to wait before trying again files that failed to load ``failures`` (>= 1) times in a row:
    1, 2, 4, ... up to ``RETRY_MAX_CHECKS``."""
    return min(1 << min(failures - 1, RETRY_MAX_CHECKS.bit_length()), RETRY_MAX_CHECKS)


@dataclass(slots=True)
class TableWatch:
    """What is known of one table's files: the signature its last counted load tried (``None``: none yet), how
    many loads of those files failed in a row, how many checks passed since the last of them, and how many loads
    in a row were discarded."""

    tried: TableSignature | None = None
    failures: int = 0
    waited: int = 0
    discarded: int = 0

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
        """Whether a load that began on files signed ``before`` and ended on ``after`` counts: no file changed in
        place under it (``renamed_over``). When it counts, ``before`` is what was tried (files renamed over since
        are due at the next check); report its outcome with ``loaded`` or ``failed``. When it does not, it adds to
        ``discarded``."""
        if not renamed_over(before, after):
            self.discarded += 1
            return False
        self.discarded = 0
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

