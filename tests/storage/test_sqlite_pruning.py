"""How the board's event log is pruned when a witness reads it (``keep_events_after``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infrafabric.board.model import Task
from infrafabric.coordinator import Coordinator
from infrafabric.storage.sqlite import PRUNE_MOST, UNWITNESSED_KEPT, SqliteStore


def _create(board: Coordinator, prefix: str, count: int) -> None:
    for start in range(0, count, 1000):
        board.create(
            [Task(id=f"{prefix}{n:06d}", title="x") for n in range(start, min(count, start + 1000))]
        )


def test_a_witness_that_stopped_does_not_make_the_board_grow_without_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unwitnessed events are kept up to UNWITNESSED_KEPT retentions; past that they go
    (the witness records the gap when it comes back), and the board says so."""
    store = SqliteStore(tmp_path / "board.db", retention=50)
    store.keep_events_after = lambda: 0  # a witness that never read anything
    with caplog.at_level(logging.WARNING, logger="infrafabric.storage.sqlite"):
        _create(Coordinator(store), "t", 3000)
    kept = store.events_since(0, 10_000)
    store.close()
    assert kept[-1].seq == 3000
    assert kept[0].seq == 3000 - 50 * UNWITNESSED_KEPT + 1  # pruned at the last 1,000
    assert "events it has not read are pruned" in caplog.text
    assert len(caplog.records) == 1  # once a minute at most, not at every prune


def test_a_backlog_let_go_is_pruned_a_few_thousand_at_a_time(tmp_path: Path) -> None:
    """When the witness catches up, the events it had held back go over several
    commits, not in one DELETE that would hold up the claim making it."""
    store = SqliteStore(tmp_path / "board.db", retention=2000)
    witnessed = [0]
    store.keep_events_after = lambda: witnessed[0]
    board = Coordinator(store)
    _create(board, "a", 12_000)
    assert store.events_since(0, 1)[0].seq == 1  # unwitnessed: all kept
    witnessed[0] = 12_000
    _create(board, "b", 1000)
    assert store.events_since(0, 1)[0].seq == PRUNE_MOST + 2  # one chunk (from event 1)
    _create(board, "c", 2000)  # two more prunes: up to 10,002, then to 12,000
    assert store.events_since(0, 1)[0].seq == 12_001  # all the witness read has gone
    store.close()


def test_a_witness_cursor_that_cannot_be_read_prunes_only_past_the_limit(
    tmp_path: Path,
) -> None:
    from infrafabric.errors import StoreError

    def unreadable() -> int:
        raise StoreError("witness.db: Cannot operate on a closed database.")

    store = SqliteStore(tmp_path / "board.db", retention=50)
    store.keep_events_after = unreadable
    _create(Coordinator(store), "t", 2000)  # a claim never fails for it
    first = store.events_since(0, 1)[0].seq
    store.close()
    assert first == 2000 - 50 * UNWITNESSED_KEPT + 1
