"""Which lookup table is to be loaded, from its files' signatures alone (``etl.lookups.changes``)."""

from __future__ import annotations

from etl.lookups.changes import (
    RETRY_MAX_CHECKS,
    FileSignature,
    TableSignature,
    TableWatch,
    newest_mtime_s,
    renamed_over,
)

FEED = ("/feeds/a.txt", FileSignature(mtime_ns=1_000_000_000, size=10, inode=7))


def signature(*files: tuple[str, FileSignature | None]) -> TableSignature:
    return tuple(files)


def test_a_table_never_tried_is_due_even_when_its_files_are_missing() -> None:
    assert TableWatch().due(signature(FEED))
    assert TableWatch().due(signature(("/feeds/a.txt", None)))
    assert TableWatch().due(signature())  # an empty directory is a table too: of no indicator


def test_a_table_is_due_when_any_part_of_a_file_signature_changes() -> None:
    watch = TableWatch()
    assert watch.settle(signature(FEED), signature(FEED))
    assert not watch.due(signature(FEED))
    path, sig = FEED
    for changed in (FileSignature(sig.mtime_ns + 1, sig.size, sig.inode),  # rewritten in place
                    FileSignature(sig.mtime_ns, sig.size + 1, sig.inode),  # within the clock's tick
                    FileSignature(sig.mtime_ns, sig.size, sig.inode + 1)):  # renamed over, same size and time
        assert watch.due(signature((path, changed)))


def test_a_file_added_to_removed_from_or_vanished_from_a_directory_is_a_change() -> None:
    other = ("/feeds/b.txt", FileSignature(5, 5, 8))
    watch = TableWatch()
    watch.settle(signature(FEED), signature(FEED))
    assert watch.due(signature(FEED, other))
    assert watch.due(signature())
    assert watch.due(signature(("/feeds/a.txt", None)))


def test_what_loaded_is_not_loaded_again_until_it_changes() -> None:
    watch = TableWatch()
    good = signature(("/feeds/a.txt", FileSignature(1, 3, 7)))
    assert watch.settle(good, good)
    watch.loaded()
    assert not any(watch.due(good) for _ in range(100))
    assert watch.due(signature(("/feeds/a.txt", FileSignature(2, 3, 7))))


def test_what_failed_is_tried_again_with_a_doubling_backoff_and_reported_once() -> None:
    """A failure may not be the files' (memory, descriptors, I/O): the same files are tried again, ever less often,
    and only their first failure is the one to log."""
    watch = TableWatch()
    bad = signature(("/feeds/a.txt", FileSignature(1, 3, 7)))
    assert watch.settle(bad, bad) and watch.failed() and watch.failing
    tried_at = []
    for check in range(1, 200):
        if watch.due(bad):
            tried_at.append(check)
            assert watch.settle(bad, bad) and not watch.failed(), "logged once per version of the files"
    gaps = [b - a for a, b in zip([0, *tried_at], tried_at, strict=False)]
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, 32] and set(gaps[5:]) == {RETRY_MAX_CHECKS}
    watch.loaded()
    assert not watch.failing and not watch.due(bad)


def test_new_files_after_a_failure_are_tried_at_once_and_their_failure_reported_again() -> None:
    watch = TableWatch()
    bad = signature(("/feeds/a.txt", FileSignature(1, 3, 7)))
    still_bad = signature(("/feeds/a.txt", FileSignature(2, 3, 8)))
    for _ in range(3):
        assert watch.settle(bad, bad)
        watch.failed()
    assert watch.due(still_bad) and watch.settle(still_bad, still_bad) and watch.failed()
    assert watch.due(still_bad), "its backoff starts over"


def test_a_load_during_which_the_files_changed_does_not_count() -> None:
    watch = TableWatch()
    half = signature(("/feeds/a.txt", FileSignature(1, 3, 7)))
    whole = signature(("/feeds/a.txt", FileSignature(2, 9, 7)))
    assert not watch.settle(half, whole)
    assert watch.tried is None and watch.due(whole), "tried again at the next check"
    assert watch.settle(whole, whole) and not watch.due(whole)


def test_a_load_during_which_a_file_was_renamed_over_counts_and_the_new_file_is_due() -> None:
    """Renamed over: the loader read one whole version of the file, old or new; the new is loaded next."""
    watch = TableWatch()
    old = signature(FEED, ("/feeds/b.txt", FileSignature(1, 3, 8)))
    renamed = signature(FEED, ("/feeds/b.txt", FileSignature(2, 9, 9)))
    assert renamed_over(old, renamed) and watch.settle(old, renamed)
    assert watch.tried == old and watch.discarded == 0 and watch.due(renamed)


def test_in_place_changes_vanished_or_listed_files_are_not_renames_and_count_as_discards() -> None:
    path, sig = FEED
    in_place = signature((path, FileSignature(sig.mtime_ns + 1, sig.size + 4, sig.inode)))
    for after in (in_place, signature((path, None)), signature(FEED, ("/feeds/b.txt", FileSignature(1, 1, 9))),
                  signature()):
        assert not renamed_over(signature(FEED), after)
    watch = TableWatch()
    assert not watch.settle(signature(FEED), in_place) and not watch.settle(in_place, signature(FEED))
    assert watch.discarded == 2
    assert watch.settle(signature(FEED), signature(FEED)) and watch.discarded == 0


def test_the_newest_mtime_is_in_seconds_and_ignores_missing_files() -> None:
    assert newest_mtime_s(signature(FEED, ("/feeds/b.txt", FileSignature(3_500_000_000, 1, 9)),
                                    ("/feeds/c.txt", None))) == 3.5
    assert newest_mtime_s(signature(("/feeds/c.txt", None))) is None
    assert newest_mtime_s(signature()) is None
