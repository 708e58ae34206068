"""One conformance suite, run against every store engine."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrafabric.board.model import Task, TaskState
from infrafabric.board.rules import BoardConfig, cancel, claim, complete, create
from infrafabric.storage.base import AgentRecord, Conflict, Store
from infrafabric.storage.memory import MemoryStore
from infrafabric.storage.redis import RedisStore
from infrafabric.storage.sqlite import SqliteStore

T0 = 1_000_000.0
ALICE, BOB = "if://agent/alice", "if://agent/bob"


@pytest.fixture(params=["memory", "sqlite-full", "sqlite-normal", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    engine: Store
    if request.param == "memory":
        engine = MemoryStore(retention=50)
    elif request.param == "redis":
        engine = RedisStore(request.getfixturevalue("redis_url"), retention=50)
    else:
        engine = SqliteStore(
            tmp_path / "board.db",
            synchronous="FULL" if request.param.endswith("full") else "NORMAL",
            retention=50,
        )
    yield engine
    engine.close()


def add(store: Store, *tasks: Task) -> None:
    store.apply(create(list(tasks), {t.id: t for t in store.tasks()}, T0))


def test_created_tasks_read_back(store: Store) -> None:
    add(store, Task(id="a", title="A", priority=70), Task(id="b", title="B", dependencies=("a",)))
    a = store.get("a")
    assert a is not None
    assert (a.title, a.priority, a.state, a.version) == ("A", 70, TaskState.AVAILABLE, 1)
    assert [t.id for t in store.tasks()] == ["a", "b"]
    assert [t.id for t in store.tasks([TaskState.WAITING])] == ["b"]
    assert [t.id for t in store.dependents("a")] == ["b"]
    assert store.get("zzz") is None
    counts = store.task_counts()
    assert {state: n for state, n in counts.items() if n} == {
        TaskState.AVAILABLE: 1,
        TaskState.WAITING: 1,
    }


def test_compare_and_set_lets_exactly_one_writer_win(store: Store) -> None:
    add(store, Task(id="a", title="A"))
    seen = store.get("a")
    assert seen is not None
    store.apply(claim(seen, ALICE, T0))
    with pytest.raises(Conflict) as caught:
        store.apply(claim(seen, BOB, T0))
    assert (caught.value.task_id, caught.value.expected, caught.value.actual) == ("a", 1, 2)
    assert store.get("a").owner == ALICE  # type: ignore[union-attr]


def test_creating_an_existing_task_conflicts(store: Store) -> None:
    add(store, Task(id="a", title="A"))
    with pytest.raises(Conflict):
        store.apply(create([Task(id="a", title="again")], {}, T0))
    assert store.get("a").title == "A"  # type: ignore[union-attr]


def test_apply_is_all_or_nothing(store: Store) -> None:
    add(store, Task(id="a", title="A"), Task(id="b", title="B", dependencies=("a",)))
    a = store.get("a")
    assert a is not None
    store.apply(claim(a, ALICE, T0))
    stale_b = store.get("b")
    claimed = store.get("a")
    assert claimed is not None
    outcome = complete(
        claimed, ALICE, {}, T0 + 1, store.dependents("a"), lambda i: store.get(i).state
    )  # type: ignore[union-attr]
    assert [t.id for t in outcome.tasks] == ["a", "b"]
    # someone else changes b first: the whole completion must fail, a included
    assert stale_b is not None
    store.apply(cancel(stale_b, None, "not needed", T0))
    events_before = len(store.events_since(0))
    with pytest.raises(Conflict):
        store.apply(outcome)
    assert store.get("a").state is TaskState.CLAIMED  # type: ignore[union-attr]
    assert len(store.events_since(0)) == events_before


def test_events_are_logged_in_order_and_replayed_from_a_position(store: Store) -> None:
    add(store, Task(id="a", title="A"))
    a = store.get("a")
    assert a is not None
    last = store.apply(claim(a, ALICE, T0))
    replay = store.events_since(0)
    assert [(e.seq, e.event.kind) for e in replay] == [(1, "task.created"), (2, "task.claimed")]
    assert last == 2
    assert [e.event.kind for e in store.events_since(1)] == ["task.claimed"]
    assert store.events_since(2) == []


def test_the_event_log_keeps_a_bounded_tail(store: Store) -> None:
    add(store, *(Task(id=f"t{i:04d}", title="x") for i in range(1200)))
    kept = store.events_since(0, limit=5000)
    assert kept[-1].seq == 1200
    assert len(kept) >= 50  # at least the retention; engines may prune lazily...
    assert len(kept) < 1200  # ...but they do prune: the oldest events are gone


def _every_page(
    store: Store, states: list[TaskState] | None, limit: int
) -> tuple[list[list[str]], list[str]]:
    """Each page's ids, following ``next`` to the end, and all of them."""
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = store.task_page(states, after, limit)
        assert len(page.tasks) <= limit
        pages.append([t.id for t in page.tasks])
        if page.next is None:
            return pages, [i for ids in pages for i in ids]
        assert after is None or page.next > after  # it moves on
        after = page.next


def test_tasks_are_read_in_pages_by_id(store: Store) -> None:
    """``task_page`` pages through the board by id, with or without states, so that no
    read of a large board holds the store for long. Ids of other scripts sort by code
    point on every engine (Python's order, not a locale's)."""
    ids = ["b", "a", "a-1", "B", "z", "\u00e9t\u00e9", "\u4efb\u52a1", "\U0001f600", "c"]
    add(store, *(Task(id=i, title=i, dependencies=("c",) if i == "z" else ()) for i in ids))
    everything = [t.id for t in store.tasks()]
    assert everything == sorted(ids)
    pages, listed = _every_page(store, None, 4)
    assert pages == [everything[0:4], everything[4:8], everything[8:]]
    assert listed == everything
    assert store.task_page(None, everything[-1], 4) == ([], None)
    exactly = store.task_page(None, everything[4], 4)  # the last four: full, so a next
    assert ([t.id for t in exactly.tasks], exactly.next) == (everything[5:], everything[-1])
    available = [t.id for t in store.tasks([TaskState.AVAILABLE])]
    assert "z" not in available  # waiting for c
    assert _every_page(store, [TaskState.AVAILABLE], 3)[1] == available
    page = store.task_page([TaskState.AVAILABLE], "a", 3)
    assert [t.id for t in page.tasks] == [i for i in available if i > "a"][:3]
    # several states: the first of all of them, not of each
    store.apply(claim(store.get("c"), ALICE, T0, BoardConfig()))  # type: ignore[arg-type]
    two = [TaskState.WAITING, TaskState.CLAIMED]
    assert _every_page(store, two, 1)[1] == ["c", "z"]
    assert [t.id for t in store.task_page(two, None, 1).tasks] == ["c"]


def test_a_page_of_some_states_reads_a_bounded_stretch_of_the_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite walks the ids for a page of some states (no index gives their order), at
    most TASK_PAGE_SCAN tasks: then it answers what it found, maybe nothing, with the
    next page's start, and the pages together still list every such task once."""
    from infrafabric.storage import sqlite

    monkeypatch.setattr(sqlite, "TASK_PAGE_SCAN", 3)
    store = SqliteStore(tmp_path / "board.db")
    try:
        add(store, *(Task(id=f"t{i:02d}", title="x") for i in range(10)))
        for task_id in ("t01", "t08"):
            store.apply(claim(store.get(task_id), ALICE, T0, BoardConfig()))  # type: ignore[arg-type]
        first = store.task_page([TaskState.CLAIMED], None, 5)
        assert ([t.id for t in first.tasks], first.next) == (["t01"], "t02")
        second = store.task_page([TaskState.CLAIMED], "t02", 5)
        assert (second.tasks, second.next) == ([], "t05")  # nothing among t03..t05
        pages, listed = _every_page(store, [TaskState.CLAIMED], 5)
        assert listed == ["t01", "t08"]
        assert len(pages) == 4  # t00-t02, t03-t05, t06-t08, t09
    finally:
        store.close()


def test_threads_racing_for_tasks_each_win_a_task_once(store: Store) -> None:
    add(store, *(Task(id=f"t{i:03d}", title="x") for i in range(60)))
    winners: dict[str, str] = {}
    lock = threading.Lock()

    def worker(agent: str) -> None:
        for task in store.tasks([TaskState.AVAILABLE]):
            fresh = store.get(task.id)
            if fresh is None or fresh.state is not TaskState.AVAILABLE:
                continue
            try:
                store.apply(claim(fresh, agent, T0))
            except Conflict:
                continue
            with lock:
                assert task.id not in winners
                winners[task.id] = agent

    threads = [threading.Thread(target=worker, args=(f"if://agent/w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(winners) == [f"t{i:03d}" for i in range(60)]
    assert all(store.get(task_id).owner == agent for task_id, agent in winners.items())  # type: ignore[union-attr]


def test_sqlite_keeps_everything_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    first = SqliteStore(path)
    first.apply(create([Task(id="a", title="A")], {}, T0))
    first.remember_sequence(ALICE, 3, 0b11)
    first.close()
    second = SqliteStore(path)
    assert second.get("a").title == "A"  # type: ignore[union-attr]
    assert [e.event.kind for e in second.events_since(0)] == ["task.created"]
    assert second.sequences() == [(ALICE, 3, 0b11)]
    second.close()
    assert (path.stat().st_mode & 0o777) == 0o600


def test_sqlite_migrates_a_board_file_without_the_lease_column(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    store = SqliteStore(path)
    store.apply(create([Task(id="a", title="A"), Task(id="b", title="B")], {}, T0))
    store.apply(claim(store.get("a"), ALICE, T0, BoardConfig(lease_seconds=10)))  # type: ignore[arg-type]
    store.close()
    with sqlite3.connect(path) as db:  # the schema of the first release
        db.execute("DROP INDEX tasks_by_lease")
        db.execute("ALTER TABLE tasks DROP COLUMN lease_expires")
    reopened = SqliteStore(path)
    assert [t.id for t in reopened.expired(T0 + 11)] == ["a"]
    reopened.close()


def test_available_tasks_come_in_claim_order(store: Store) -> None:
    store.apply(
        create(
            [
                Task(id="filler", title="x", priority=100, filler=True),
                Task(id="low", title="x", priority=10),
                Task(id="high-b", title="x", priority=90),
                Task(id="high-a", title="x", priority=90),
                Task(id="waiting", title="x", priority=99, dependencies=("low",)),
            ],
            {},
            T0,
        )
    )
    store.apply(create([Task(id="high-old", title="x", priority=90)], {}, T0 - 10))
    assert [t.id for t in store.available()] == ["high-old", "high-a", "high-b", "low", "filler"]
    assert [t.id for t in store.available(offset=1, limit=2)] == ["high-a", "high-b"]
    claimed = store.get("high-old")
    assert claimed is not None
    store.apply(claim(claimed, ALICE, T0))
    assert [t.id for t in store.available(limit=1)] == ["high-a"]


def test_fillers_are_the_available_fillers_in_claim_order(store: Store) -> None:
    store.apply(
        create(
            [
                Task(id="work", title="x", priority=100),
                Task(id="f-low", title="x", priority=10, filler=True),
                Task(id="f-high-b", title="x", priority=90, filler=True),
                Task(id="f-high-a", title="x", priority=90, filler=True),
                Task(id="f-waiting", title="x", priority=99, filler=True, dependencies=("work",)),
            ],
            {},
            T0,
        )
    )
    store.apply(create([Task(id="f-high-old", title="x", priority=90, filler=True)], {}, T0 - 10))
    assert [t.id for t in store.fillers()] == ["f-high-old", "f-high-a", "f-high-b", "f-low"]
    assert [t.id for t in store.fillers(limit=2)] == ["f-high-old", "f-high-a"]
    assert store.fillers(limit=0) == []
    taken = store.get("f-high-old")
    assert taken is not None
    store.apply(claim(taken, ALICE, T0))
    assert [t.id for t in store.fillers()] == ["f-high-a", "f-high-b", "f-low"]


def test_expired_finds_owned_tasks_whose_lease_ran_out_soonest_first(store: Store) -> None:
    add(store, *(Task(id=name, title="x") for name in ("a", "b", "c", "d")))
    config = BoardConfig(lease_seconds=10)
    for name, claimed_at in (("a", T0 + 5), ("b", T0), ("c", T0 + 50)):
        store.apply(claim(store.get(name), ALICE, claimed_at, config))  # type: ignore[arg-type]
    done = store.get("c")
    store.apply(complete(done, ALICE, {}, T0 + 51, []))  # type: ignore[arg-type]
    assert store.expired(T0 + 10) == []  # b's lease runs to T0 + 10 exactly: not yet out
    assert [t.id for t in store.expired(T0 + 15.5)] == ["b", "a"]
    assert [t.id for t in store.expired(T0 + 15.5, limit=1)] == ["b"]
    # a completed task (c) holds no lease, an available one (d) never had one
    assert [t.id for t in store.expired(T0 + 1_000)] == ["b", "a"]


def test_a_batch_keeps_each_step_atomic_and_commits_them_together(store: Store) -> None:
    add(store, Task(id="a", title="A"), Task(id="b", title="B"))
    a, b = store.get("a"), store.get("b")
    with store.batch():
        store.apply(claim(a, ALICE, T0))  # type: ignore[arg-type]
        with pytest.raises(Conflict):  # a stale write fails alone...
            store.apply(claim(a, BOB, T0))  # type: ignore[arg-type]
        with pytest.raises(RuntimeError):  # ...as does work that raises half way
            store.transact(lambda inner: _raise_after_reading(inner, "b"))
        store.deliver(BOB, "m-1", b"{}")
        store.apply(claim(b, BOB, T0))  # type: ignore[arg-type]
    assert store.get("a").owner == ALICE  # type: ignore[union-attr]
    assert store.get("b").owner == BOB  # type: ignore[union-attr]
    assert [e.event.kind for e in store.events_since(0)][-2:] == ["task.claimed"] * 2
    assert [entry.message_id for entry in store.pending(BOB)] == ["m-1"]


def _raise_after_reading(store: Store, task_id: str) -> None:
    assert store.get(task_id) is not None
    raise RuntimeError("the work failed")


def test_sqlite_batch_is_durable_only_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    store = SqliteStore(path)
    store.apply(create([Task(id="a", title="A"), Task(id="b", title="B")], {}, T0))

    def abandoned_batch() -> None:
        with store.batch():
            store.apply(claim(store.get("a"), ALICE, T0))  # type: ignore[arg-type]
            with sqlite3.connect(path) as other:  # another connection sees nothing of it yet
                state = other.execute("SELECT state FROM tasks WHERE id = 'a'").fetchone()
            assert state == ("available",)
            raise RuntimeError("the batch is abandoned")

    with pytest.raises(RuntimeError, match="abandoned"):
        abandoned_batch()
    assert store.get("a").state is TaskState.AVAILABLE  # type: ignore[union-attr]
    with store.batch():
        store.apply(claim(store.get("a"), ALICE, T0))  # type: ignore[arg-type]
        store.apply(claim(store.get("b"), ALICE, T0))  # type: ignore[arg-type]
    store.close()
    reopened = SqliteStore(path)
    assert [t.owner for t in reopened.tasks()] == [ALICE, ALICE]
    reopened.close()


def test_replay_windows_are_kept_and_only_grow(store: Store) -> None:
    wide = 1 << 70  # wider than a 64-bit integer column
    store.remember_sequence(BOB, 5, 0b1)
    store.remember_sequence(ALICE, 9, 0b101)
    store.remember_sequence(ALICE, 7, 0b1)  # a late writer's older window: ignored
    store.remember_sequence(ALICE, 9, 0b100)  # fewer numbers at the same height: ignored
    assert store.sequences() == [(ALICE, 9, 0b101), (BOB, 5, 0b1)]
    store.remember_sequence(ALICE, 9, 0b111)
    store.remember_sequence(BOB, 80, wide | 1)
    assert store.sequences() == [(ALICE, 9, 0b111), (BOB, 80, wide | 1)]


def test_state_documents_are_replaced_deleted_and_read_by_prefix(store: Store) -> None:
    store.save_state({"governor/agent/a": b"1", "governor/task/t": b"2", "other/x": b"3"})
    store.save_state({"governor/agent/a": b"4", "governor/task/t": None})
    store.save_state({})
    assert store.load_state("governor/") == {"governor/agent/a": b"4"}
    assert store.load_state("other/") == {"other/x": b"3"}
    assert store.load_state("governor_") == {}  # a prefix, not a pattern
    with pytest.raises(RuntimeError, match="abandoned"):  # an abandoned batch keeps none
        _abandoned_batch(store)
    if store.group_commit:  # memory and Redis commit each step on its own (see batch)
        assert "governor/agent/b" not in store.load_state("governor/")


def _abandoned_batch(store: Store) -> None:
    with store.batch():
        store.save_state({"governor/agent/b": b"5"})
        raise RuntimeError("abandoned")


def test_inbox_keeps_messages_until_acknowledged_and_ignores_resends(store: Store) -> None:
    first = store.deliver(BOB, "m-1", b'{"hello":1}')
    second = store.deliver(BOB, "m-2", b'{"hello":2}')
    assert store.deliver(BOB, "m-1", b'{"hello":1}') == first  # a retried send
    store.deliver(ALICE, "m-1", b'{"for":"alice"}')  # same id, other receiver: its own copy
    assert [(e.position, e.message_id) for e in store.pending(BOB)] == [
        (first, "m-1"),
        (second, "m-2"),
    ]
    assert store.pending(BOB, after=first)[0].body == b'{"hello":2}'
    assert store.ack(BOB, first)
    assert not store.ack(BOB, first)  # already gone
    assert not store.ack(ALICE, second)  # not alice's
    assert [e.message_id for e in store.pending(BOB)] == ["m-2"]
    assert store.deliver(BOB, "m-1", b'{"hello":1}') == first  # acknowledged, still no duplicate
    assert [e.message_id for e in store.pending(BOB)] == ["m-2"]
    assert [e.body for e in store.pending(ALICE)] == [b'{"for":"alice"}']
    assert store.inbox_depth() == 2  # bob's m-2 and alice's copy
    store.ack(ALICE, store.pending(ALICE)[0].position)
    assert store.inbox_depth() == 1


def test_sqlite_inbox_survives_reopening(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "board.db")
    position = first.deliver(BOB, "m-1", b"x")
    first.close()
    second = SqliteStore(tmp_path / "board.db")
    assert [(e.position, e.body) for e in second.pending(BOB)] == [(position, b"x")]
    second.close()


def test_agents_are_enrolled_and_re_enrolled(store: Store) -> None:
    store.enroll(AgentRecord(id=BOB, capabilities=("code:python",)))
    store.enroll(AgentRecord(id=ALICE, capabilities=("ops:k8s",)))
    store.enroll(AgentRecord(id=BOB, capabilities=("code:python", "test:pytest")))
    assert [(a.id, a.capabilities) for a in store.agents()] == [
        (ALICE, ("ops:k8s",)),
        (BOB, ("code:python", "test:pytest")),
    ]


def _tasks_in_the_database_file_alone(path: Path) -> int:
    """Tasks in the main database file read without its WAL: what checkpoints copied."""
    alone = path.with_name("alone.db")
    alone.write_bytes(path.read_bytes())
    try:
        with sqlite3.connect(alone) as db:
            (count,) = db.execute("SELECT count(*) FROM tasks").fetchone()
    except sqlite3.OperationalError:  # not even the schema has been copied yet
        return 0
    return int(count)


def test_sqlite_background_checkpoints_copy_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    store = SqliteStore(path, synchronous="NORMAL", background_checkpoints=True)
    store.apply(create([Task(id=f"t{i}", title="x") for i in range(50)], {}, T0))
    deadline = time.monotonic() + 10
    while _tasks_in_the_database_file_alone(path) != 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _tasks_in_the_database_file_alone(path) == 50
    checkpointer = store._checkpointer
    assert checkpointer is not None
    store.close()
    assert not checkpointer.is_alive()


def test_sqlite_background_checkpoints_come_at_the_cadence_asked(tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    store = SqliteStore(
        path, synchronous="NORMAL", background_checkpoints=True, checkpoint_seconds=30.0
    )
    store.apply(create([Task(id=f"t{i}", title="x") for i in range(50)], {}, T0))
    time.sleep(0.6)  # twelve of the default periods, a fiftieth of this one
    assert _tasks_in_the_database_file_alone(path) == 0
    started = time.monotonic()
    store.close()  # the thread waiting out its period stops at once all the same
    assert time.monotonic() - started < 5
    for wrong in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="checkpoint_seconds"):
            SqliteStore(tmp_path / "other.db", checkpoint_seconds=wrong)


def test_sqlite_without_background_checkpoints_leaves_small_writes_in_the_wal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "board.db"
    store = SqliteStore(path, synchronous="NORMAL")
    store.apply(create([Task(id=f"t{i}", title="x") for i in range(50)], {}, T0))
    time.sleep(0.6)  # two checkpoint periods: nobody checkpoints a WAL this small
    assert _tasks_in_the_database_file_alone(path) == 0
    store.close()


def test_many_tasks_are_read_in_one_call(store: Store) -> None:
    add(store, *(Task(id=f"t{i:04d}", title="x") for i in range(1200)))
    wanted = [f"t{i:04d}" for i in range(0, 1200, 2)] + ["missing", "t0000"]
    found = store.get_many(wanted)
    assert sorted(found) == sorted({f"t{i:04d}" for i in range(0, 1200, 2)})
    assert found["t0002"].title == "x"
    assert store.get_many([]) == {}
