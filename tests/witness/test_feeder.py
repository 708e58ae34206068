"""The feeder: its checkpoint cadence, and a board that lost events the witness log already holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from infrafabric import ioprio
from infrafabric.board.model import Task
from infrafabric.coordinator import Coordinator
from infrafabric.storage.sqlite import SqliteStore
from infrafabric.witness.audit import audit_log
from infrafabric.witness.entry import WitnessEntry, decode_entry, encode_entry, entry_of_board_event
from infrafabric.witness.feeder import WitnessFeeder
from infrafabric.witness.log import WitnessLog

KEY = nacl.signing.SigningKey(b"\x07" * 32)


def _feed(board: Path, witness: Path) -> list[WitnessEntry]:
    """One feeder over ``board`` and ``witness``, until it has caught up; every entry."""
    store, log = SqliteStore(board), WitnessLog(witness)
    try:
        feeder = WitnessFeeder(log, store, KEY, "test")
        while feeder.run_once(force_checkpoint=True):
            pass
        report = audit_log(log, feeder.key)
        assert report.ok, report.problems
        return [decode_entry(data) for _, _, data in log.entries(0, log.size)]
    finally:
        log.close()
        store.close()


def _create(board: Path, first: int, count: int, **store_options: int) -> None:
    store = SqliteStore(board, **store_options)  # type: ignore[arg-type]
    try:
        Coordinator(store).create(
            [Task(id=f"t{n:05d}", title=f"task {n}") for n in range(first, first + count)]
        )
    finally:
        store.close()


def _snapshot(board: Path, copy: Path) -> None:
    with sqlite3.connect(board) as source, sqlite3.connect(copy) as target:
        source.backup(target)


def _lose_since(board: Path, snapshot: Path) -> None:
    """What a power cut does to commits that were never flushed: the board is back
    where the snapshot was."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{board}{suffix}").unlink(missing_ok=True)
    snapshot.rename(board)


def _board_events(entries: list[WitnessEntry]) -> list[int]:
    return [e.source["board_event"] for e in entries if "board_event" in e.source]


def _derived_from_board(board: Path, entries: list[WitnessEntry]) -> bool:
    """Whether each entry that names a board event is that event, as the board holds
    it now."""
    store = SqliteStore(board)
    try:
        held = {stored.seq: stored for stored in store.events_since(0, 100_000)}
    finally:
        store.close()
    return all(
        encode_entry(entry_of_board_event(held[e.source["board_event"]], e.index))
        == encode_entry(e)
        for e in entries
        if "board_event" in e.source
    )


def test_a_board_that_lost_witnessed_events_is_named_and_its_new_events_witnessed(
    tmp_path: Path,
) -> None:
    board, witness, snapshot = tmp_path / "board.db", tmp_path / "witness.db", tmp_path / "a.db"
    _create(board, 0, 5)
    _snapshot(board, snapshot)  # the board as a power cut will leave it: events 1..5
    _create(board, 5, 3)
    before = _feed(board, witness)
    assert _board_events(before) == list(range(1, 9))

    _lose_since(board, snapshot)  # events 6..8 are gone from the board...
    _create(board, 100, 4)  # ...and these new ones take their numbers (6..9)
    after = _feed(board, witness)

    assert after[: len(before)] == before  # append-only: what was witnessed stays
    rewound = after[len(before)]
    assert (rewound.component, rewound.event) == ("witness", "witness.rewound")
    assert rewound.payload == {"board_events_agree_up_to": 5, "witnessed_up_to": 8}
    added = after[len(before) + 1 :]
    assert _board_events(added) == [6, 7, 8, 9]  # none skipped, though 6..8 were seen
    assert [e.task_id for e in added] == ["t00100", "t00101", "t00102", "t00103"]
    assert _derived_from_board(board, added)


def test_a_restart_on_a_board_that_kept_everything_names_nothing(tmp_path: Path) -> None:
    board, witness = tmp_path / "board.db", tmp_path / "witness.db"
    _create(board, 0, 3)
    first = _feed(board, witness)
    _create(board, 3, 2)
    second = _feed(board, witness)
    assert second[: len(first)] == first
    assert _board_events(second) == [1, 2, 3, 4, 5]
    assert all(e.component == "board" for e in second)
    assert _derived_from_board(board, second)


def test_another_board_altogether_is_witnessed_from_its_start(tmp_path: Path) -> None:
    board, witness = tmp_path / "board.db", tmp_path / "witness.db"
    _create(board, 0, 3)
    before = _feed(board, witness)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{board}{suffix}").unlink(missing_ok=True)
    _create(board, 50, 2)  # a new file: events 1 and 2 again, other tasks
    after = _feed(board, witness)
    rewound = after[len(before)]
    assert rewound.payload == {"board_events_agree_up_to": 0, "witnessed_up_to": 3}
    assert [e.task_id for e in after[len(before) + 1 :]] == ["t00050", "t00051"]


def test_a_board_pruned_past_the_cursor_is_a_gap_not_a_loss(tmp_path: Path) -> None:
    board, witness = tmp_path / "board.db", tmp_path / "witness.db"
    _create(board, 0, 3, retention=50)
    before = _feed(board, witness)
    _create(board, 10, 1200, retention=50)  # pruned every 1,000: only the newest kept
    after = _feed(board, witness)
    kinds = [e.event for e in after[len(before) :]]
    assert kinds[0] == "witness.gap"
    assert "witness.rewound" not in kinds
    store = SqliteStore(board)
    try:
        oldest = store.events_since(0, 1)[0].seq
    finally:
        store.close()
    assert after[len(before)].payload == {"first_board_event": 4, "last_board_event": oldest - 1}
    assert _board_events(after[len(before) + 1 :])[0] == oldest


def test_a_log_tampered_with_at_its_end_is_not_taken_for_a_board_that_lost_events(
    tmp_path: Path,
) -> None:
    board, witness = tmp_path / "board.db", tmp_path / "witness.db"
    _create(board, 0, 3)
    before = _feed(board, witness)
    with sqlite3.connect(witness) as db:
        db.execute("UPDATE entries SET entry = x'7b7d7b' WHERE idx = ?", (len(before) - 1,))
    _create(board, 3, 2)
    store, log = SqliteStore(board), WitnessLog(witness)
    try:
        WitnessFeeder(log, store, KEY, "test").run_once()
        added = [decode_entry(data) for _, _, data in log.entries(len(before), log.size)]
    finally:
        log.close()
        store.close()
    assert [(e.event, e.source) for e in added] == [
        ("task.created", {"board_event": 4}),
        ("task.created", {"board_event": 5}),
    ]


@pytest.mark.parametrize("in_a_process", [False, True], ids=["thread", "process"])
def test_a_server_board_keeps_the_events_its_witness_has_not_read(
    tmp_path: Path, in_a_process: bool
) -> None:
    """However far the witness falls behind (a busy machine runs it last), the board of
    a server prunes only events it has witnessed: late, never a gap. The feeder in a
    thread is asked directly; one in a process through the log it writes."""
    import time

    from infrafabric.server.runner import open_server
    from infrafabric.witness.feeder import BOARD_SOURCE, WitnessProcess

    state = open_server(tmp_path / "data", synchronous="NORMAL", witness_process=in_a_process)
    feeder, store = state.witness, state.service.coordinator.store
    assert isinstance(feeder, WitnessProcess if in_a_process else WitnessFeeder)
    assert isinstance(store, SqliteStore)

    def catch_up(events: int) -> None:  # not started by open_server: it runs when told
        if isinstance(feeder, WitnessFeeder):
            while feeder.run_once():
                pass
            return
        assert isinstance(feeder, WitnessProcess)
        if feeder.pid is None:
            feeder.start()
        deadline = time.monotonic() + 60
        while feeder.log.cursor(BOARD_SOURCE) < events:
            assert time.monotonic() < deadline, "the witness process did not catch up"
            time.sleep(0.05)
        feeder.log.refresh()

    try:
        store.retention = 200  # would prune all but the newest 200 every 1,000 events
        board = Coordinator(store)
        board.create([Task(id=f"a{n:04d}", title="x") for n in range(1200)])
        assert len(store.events_since(0, 5000)) == 1200  # none witnessed: all kept
        catch_up(1200)
        board.create([Task(id=f"b{n:04d}", title="x") for n in range(1200)])
        kept = store.events_since(0, 5000)
        assert kept[0].seq == 1201  # the witnessed ones went, the new ones stayed
        catch_up(2400)
        entries = [decode_entry(data) for _, _, data in feeder.log.entries(0, feeder.log.size)]
        assert len(entries) == 2400
        assert not [e for e in entries if e.component == "witness"]  # no gap
        assert _board_events(entries) == list(range(1, 2401))
    finally:
        state.close()


def test_the_witness_process_runs_only_when_a_core_is_free(tmp_path: Path) -> None:
    """The child runs in the idle scheduling class: a thread of the server that wakes
    takes the core from it at once; and its disk requests in the idle I/O class."""
    import os
    import time

    from infrafabric.witness.feeder import WitnessProcess

    SqliteStore(tmp_path / "board.db").close()
    process = WitnessProcess(tmp_path / "board.db", tmp_path / "witness.db", "NORMAL", KEY, "t")
    process.start()
    try:
        assert process.pid is not None
        deadline = time.monotonic() + 30
        while os.sched_getscheduler(process.pid) != os.SCHED_IDLE:
            assert time.monotonic() < deadline, "the witness process never left SCHED_OTHER"
            time.sleep(0.05)
        while ioprio.io_class(process.pid) != ioprio.IDLE:
            assert time.monotonic() < deadline, "the witness process's I/O never went idle"
            time.sleep(0.05)
    finally:
        process.close()
        process.log.close()


@pytest.mark.parametrize("ready", [False, True], ids=["starting", "feeding"])
def test_closing_ends_a_witness_process_that_gets_no_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ready: bool
) -> None:
    """In the idle class the child may get no time on a busy machine: ``ifab serve``
    then waited 30 s on SIGTERM (a test harness gave up at 20). A stopped child stands
    in for one that gets no time: closing ends it, still starting or feeding."""
    import os
    import signal
    import time

    from infrafabric.witness import feeder as feeder_module
    from infrafabric.witness.feeder import WitnessProcess

    monkeypatch.setattr(feeder_module, "CLOSE_SECONDS", 1.0, raising=False)
    SqliteStore(tmp_path / "board.db").close()
    process = WitnessProcess(tmp_path / "board.db", tmp_path / "witness.db", "NORMAL", KEY, "t")
    process.start()
    try:
        assert process.pid is not None
        if ready:  # (it enters the idle class as it starts feeding)
            deadline = time.monotonic() + 60
            while os.sched_getscheduler(process.pid) != os.SCHED_IDLE:
                assert time.monotonic() < deadline, "the witness process never started feeding"
                time.sleep(0.05)
        os.kill(process.pid, signal.SIGSTOP)
        process.close()
        assert not process._process.is_alive()
    finally:
        if process._process.is_alive():
            process._process.kill()
        process.log.close()


def test_a_server_over_redis_witnesses_a_backlog_in_small_appends(
    tmp_path: Path, redis_url: str
) -> None:
    """Redis runs a script alone, so one large append would make every server's claims
    wait for it (20 to 30 ms for 1,000 entries): a server's witness over Redis catches up
    on a backlog in appends of at most APPEND_MOST entries, and misses none."""
    from infrafabric.server.runner import open_server
    from infrafabric.witness.redis_log import APPEND_MOST, RedisWitnessLog

    state = open_server(tmp_path / "data", store_url=redis_url)
    feeder = state.witness
    try:
        assert isinstance(feeder, WitnessFeeder)
        log = feeder.log
        assert isinstance(log, RedisWitnessLog)
        Coordinator(state.service.coordinator.store).create(
            [Task(id=f"t{n:03d}", title="x") for n in range(450)]
        )
        append = log._append
        sizes: list[int] = []

        def counted(*, client: Any, args: list[Any]) -> Any:
            sizes.append(int(args[5]))  # (the entries' count, after five fixed arguments)
            return append(client=client, args=args)

        log._append = counted  # type: ignore[method-assign]
        while feeder.run_once():  # not started by open_server: it runs when told
            pass
        assert sum(sizes) == 450
        assert max(sizes) <= APPEND_MOST < 450
        entries = [decode_entry(data) for _, _, data in log.entries(0, log.size)]
        assert _board_events(entries) == list(range(1, 451))
    finally:
        state.close()


def test_a_checkpoint_is_signed_at_least_once_a_second_while_entries_arrive(
    tmp_path: Path,
) -> None:
    now = [1_000.0]
    store, log = SqliteStore(tmp_path / "board.db"), WitnessLog(tmp_path / "witness.db")
    try:
        feeder = WitnessFeeder(log, store, KEY, "test", clock=lambda: now[0])
        coordinator = Coordinator(store, clock=lambda: now[0])
        signed: list[int] = []
        for step in range(25):  # an entry every 0.1 s for 2.5 s, one round after each
            now[0] = 1_000.0 + step / 10
            coordinator.create([Task(id=f"t{step}", title="t")])
            feeder.run_once()
            signed.append(log.checkpoints()[0][0])
        # signed at 0 s, 1 s and 2 s: a new size on every tenth round, never more often
        assert [signed.index(size) for size in sorted(set(signed))] == [0, 10, 20]
        assert sorted(set(signed)) == [1, 11, 21]
        now[0] = 1_003.0
        feeder.run_once()
        assert log.checkpoints()[0][0] == 25  # the rest, once its second is up
        now[0] = 1_010.0
        feeder.run_once()  # nothing new: nothing to sign, however long it has been
        assert [size for size, _ in log.checkpoints(limit=10)] == [25, 21, 11, 1]
    finally:
        log.close()
        store.close()
