"""The SQLite witness log: the same tree as the pure functions, across reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrafabric.witness.log import WitnessLog
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
