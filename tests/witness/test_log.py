"""The SQLite witness log: the same tree as the pure functions, across reopening."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from infrafabric.witness.log import LEAF_RUN, LogDamaged, WitnessLog
from infrafabric.witness.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

ENTRIES = [f'{{"n":{i}}}'.encode() for i in range(300)]
LEAVES = [leaf_hash(entry) for entry in ENTRIES]


def test_roots_and_proofs_match_the_pure_tree_at_every_size(tmp_path: Path) -> None:
    log = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    assert log.root() == EMPTY_ROOT
    appended = 0
    for batch in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 69):  # 300 in uneven batches
        assert log.append(ENTRIES[appended : appended + batch]) == range(appended, appended + batch)
        appended += batch
        assert log.size == appended
        assert log.root() == root(LEAVES[:appended])
    for size in (1, 2, 7, 64, 65, 150, 299, 300):
        assert log.root(size) == root(LEAVES[:size])
        for index in {0, size // 2, size - 1}:
            proof = log.inclusion_proof(index, size)
            verify_inclusion(LEAVES[index], index, size, proof, root(LEAVES[:size]))
        for old in {1, size // 3, size - 1}:
            if 0 < old < size:
                proof = log.consistency_proof(old, size)
                verify_consistency(old, size, root(LEAVES[:old]), root(LEAVES[:size]), proof)
    assert log.entries(5, 8) == [(i, LEAVES[i], ENTRIES[i]) for i in range(5, 8)]
    assert log.index_of(LEAVES[42]) == 42
    assert log.index_of(leaf_hash(b"never")) is None
    with pytest.raises(ValueError, match="300 entries"):
        log.root(301)
    log.close()


def test_a_reopened_log_carries_on_with_the_same_tree(tmp_path: Path) -> None:
    first = WitnessLog(tmp_path / "witness.db")
    first.append(ENTRIES[:77], source="events", position=77)
    first.save_checkpoint(77, "note for 77")
    first.close()
    second = WitnessLog(tmp_path / "witness.db")
    assert (second.size, second.cursor("events"), second.cursor("other")) == (77, 77, 0)
    assert second.root() == root(LEAVES[:77])
    second.append(ENTRIES[77:])
    assert second.root() == root(LEAVES)
    assert second.checkpoints() == [(77, "note for 77")]
    assert second.checkpoint_at(77) == "note for 77"
    assert second.checkpoint_at(78) is None
    second.close()
    assert (tmp_path / "witness.db").stat().st_mode & 0o777 == 0o600


def test_a_reader_refreshing_while_the_writer_appends_never_rolls_it_back(
    tmp_path: Path,
) -> None:
    import threading

    log = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            log.refresh()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for entry in ENTRIES:
            log.append([entry])  # a rolled-back size would make this reuse an index
    finally:
        stop.set()
        reader.join()
    assert log.size == len(ENTRIES)
    assert log.root() == root(LEAVES)
    other = WitnessLog(tmp_path / "witness.db")  # another process's view catches up
    assert other.refresh() == len(ENTRIES)
    assert other.root() == root(LEAVES)


RUN_ENTRIES = [f'{{"n":{i}}}'.encode() for i in range(2 * LEAF_RUN + 100)]  # two runs + a tail


def _runs_stored(path: Path) -> list[tuple[int, int]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT run, count(*) FROM leaf_runs GROUP BY run ORDER BY run"
        ).fetchall()


def test_lookup_by_hash_finds_entries_in_every_sorted_run_and_in_the_tail(tmp_path: Path) -> None:
    log = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    for start in range(0, len(RUN_ENTRIES), 1000):  # rounds that cross the run boundaries
        log.append(RUN_ENTRIES[start : start + 1000])
    assert _runs_stored(tmp_path / "witness.db") == [(0, LEAF_RUN), (1, LEAF_RUN)]
    for index in (
        0,
        1234,
        LEAF_RUN - 1,
        LEAF_RUN,
        2 * LEAF_RUN - 1,
        2 * LEAF_RUN,
        len(RUN_ENTRIES) - 1,
    ):
        assert log.index_of(leaf_hash(RUN_ENTRIES[index])) == index
    assert log.index_of(leaf_hash(b"never")) is None
    log.close()


def test_a_log_with_the_old_leaf_index_is_sorted_into_runs_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    log = WitnessLog(path, synchronous="NORMAL")
    log.append(RUN_ENTRIES)
    log.close()
    with contextlib.closing(sqlite3.connect(path)) as db:  # as the log was before runs
        db.execute("DELETE FROM leaf_runs")
        db.execute("CREATE INDEX entries_by_leaf ON entries (leaf)")
        db.commit()
    log = WitnessLog(path, synchronous="NORMAL")
    assert _runs_stored(path) == [(0, LEAF_RUN), (1, LEAF_RUN)]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == []
    assert log.index_of(leaf_hash(RUN_ENTRIES[LEAF_RUN + 7])) == LEAF_RUN + 7
    log.close()


def test_a_run_edited_to_name_another_entry_gives_no_proof_of_it(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    log = WitnessLog(path, synchronous="NORMAL")
    log.append(RUN_ENTRIES)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE leaf_runs SET idx = 9 WHERE leaf = ?", (leaf_hash(RUN_ENTRIES[5]),))
        db.commit()
    assert log.index_of(leaf_hash(RUN_ENTRIES[5])) is None  # entry 9 has another hash
    assert log.index_of(leaf_hash(RUN_ENTRIES[9])) == 9
    log.close()


def test_a_log_that_cannot_be_written_now_opens_and_is_looked_up_without_its_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "witness.db"
    log = WitnessLog(path, synchronous="NORMAL")
    log.append(RUN_ENTRIES)
    log.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("DELETE FROM leaf_runs")  # as the log was before runs
        other.execute("CREATE INDEX entries_by_leaf ON entries (leaf)")
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock throughout
        log = WitnessLog(path, synchronous="NORMAL")  # waits its busy timeout, then opens
        assert log.index_of(leaf_hash(RUN_ENTRIES[LEAF_RUN + 7])) == LEAF_RUN + 7
        assert log.index_of(leaf_hash(b"never")) is None
        log.close()
        other.execute("ROLLBACK")
    assert _runs_stored(path) == []  # it wrote nothing


@pytest.mark.parametrize(
    ("edit", "read_back"),
    [
        ("replace(entry, '\"n\":1', '\"n\":9')", b'{"n":90}'),  # replace() gives TEXT
        ("CAST(x'ff7b7d' AS TEXT)", b"\xff{}"),  # TEXT that is not even UTF-8
        ("12", b"12"),  # a number
    ],
    ids=["text", "text-not-utf8", "integer"],
)
def test_an_entry_edited_into_another_type_reads_as_its_bytes(
    tmp_path: Path, edit: str, read_back: bytes
) -> None:
    """A hand edit in SQLite that stores TEXT (or a number) where the log keeps BLOBs is
    read back as those bytes, for an audit to find, not a TypeError or decoding error."""
    path = tmp_path / "witness.db"
    log = WitnessLog(path, synchronous="NORMAL")
    log.append(ENTRIES[:20])
    log.save_checkpoint(20, "a note\n")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"UPDATE entries SET entry = {edit} WHERE idx = 10")  # noqa: S608
        db.commit()
    [(index, leaf, entry)] = log.entries(10, 11)
    assert (index, leaf, entry) == (10, LEAVES[10], read_back)
    assert log.checkpoints(1) == [(20, "a note\n")]  # text columns still read as text
    assert log.checkpoint_at(20) == "a note\n"
    log.close()


def test_a_missing_subtree_is_reported_as_damage(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    log = WitnessLog(path, synchronous="NORMAL")
    log.append(ENTRIES[:8])
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DELETE FROM nodes WHERE level = 1 AND idx = 0")
        db.commit()
    with pytest.raises(LogDamaged, match="lacks subtree 1/0"):
        log.inclusion_proof(2)
    log.close()


def test_a_checkpoint_is_committed_with_a_flush_and_the_appends_are_not(tmp_path: Path) -> None:
    """A published checkpoint must survive a power cut with the entries it signs, so its
    commit syncs the WAL (synchronous=FULL for that one commit) while the appends of a
    NORMAL log stay unsynced; and the log is left NORMAL for the next append."""
    log = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    statements: list[str] = []
    log._db.set_trace_callback(statements.append)  # what the log's connection runs
    log.append(ENTRIES[:4])
    log.save_checkpoint(4, "a note\n")
    log.append(ENTRIES[4:8])
    flushed = statements.index("PRAGMA synchronous=FULL")
    insert = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO checkpoints"))
    restored = statements.index("PRAGMA synchronous=NORMAL")
    assert flushed < insert < restored  # the checkpoint's own commit, in between
    assert statements.count("PRAGMA synchronous=FULL") == 1  # no append flushed
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again
    log.close()


@pytest.mark.parametrize(
    "edit",
    ["DELETE FROM entries WHERE idx = 4", "INSERT INTO entries VALUES (-1, x'00', x'00')"],
    ids=["a-hole", "a-negative-index"],
)
def test_the_size_is_one_past_the_highest_entry_not_the_number_of_rows(
    tmp_path: Path, edit: str
) -> None:
    """An entry missing from the middle, or a stray row at a negative index (a file
    edited by hand), must not move the end of the tree: the log keeps its size and its
    root, and the next append goes after its last entry (it used to take the number of
    rows: the log then found itself damaged, or appended onto an index already taken)."""
    path = tmp_path / "witness.db"
    log = WitnessLog(path, synchronous="NORMAL")
    log.append(ENTRIES[:20])
    log.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(edit)
        db.commit()
    log = WitnessLog(path, synchronous="NORMAL")
    assert (log.size, log.damaged, log.refresh()) == (20, "", 20)
    assert log.root() == root(LEAVES[:20])
    assert log.append(ENTRIES[20:22]) == range(20, 22)
    assert log.root() == root(LEAVES[:22])
    log.close()
