"""What the Redis store adds to the conformance suite: several processes share it.

Two ``RedisStore`` objects on one Redis stand for two fabric servers; races between
them are made deterministic where they can be (the other "server" writes in the middle
of a transaction) and hammered with threads where they cannot.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from infrafabric import SigningIdentity, agent_id
from infrafabric.board.model import Task, TaskState
from infrafabric.board.rules import BoardConfig, Outcome, cancel, claim, create
from infrafabric.coordinator import AGENT_STRIPES, Coordinator
from infrafabric.errors import StoreError, StoreUnavailable
from infrafabric.protocol.keyring import (
    KEYRING_FORMAT,
    KeyRecord,
    Keyring,
    KeyringFile,
    new_key_record,
)
from infrafabric.server.relay import Relay
from infrafabric.storage.base import Conflict, Replayed, Store
from infrafabric.storage.redis import RedisStore, claim_key, redacted, redis_version_supported
from infrafabric.witness.redis_log import LogMoved, RedisWitnessLog
from tests.redis_server import RedisServer

T0 = 1_000_000.0
ALICE, BOB = "if://agent/alice", "if://agent/bob"


@pytest.fixture
def servers(redis_url: str) -> Iterator[tuple[RedisStore, RedisStore]]:
    one, two = RedisStore(redis_url), RedisStore(redis_url)
    yield one, two
    one.close()
    two.close()


def _claim_until_none(coordinators: list[Coordinator], agents: int) -> Counter[str]:
    """``agents`` threads, agent n on ``coordinators[n % len]``, each claiming until
    nothing is left; how many times each task was won."""
    won: Counter[str] = Counter()
    lock = threading.Lock()

    def agent(number: int) -> None:
        coordinator = coordinators[number % len(coordinators)]
        while (task := coordinator.claim_next(f"if://agent/w{number}")) is not None:
            with lock:
                won[task.id] += 1

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_a_task_read_while_deciding_that_changed_meanwhile_is_a_conflict(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    one.apply(create([Task(id="a", title="A"), Task(id="b", title="B")], {}, T0))

    def decide(store: Store) -> Outcome:
        a, b = store.get("a"), store.get("b")
        assert a is not None
        assert b is not None
        two.apply(cancel(b, None, "the other server got there first", T0))  # meanwhile
        return claim(a, ALICE, T0)  # writes only a, but was decided on b's old state

    with pytest.raises(Conflict) as caught:
        one.transact(decide)
    assert caught.value.task_id == "b"
    assert one.get("a").state is TaskState.AVAILABLE  # type: ignore[union-attr]


def test_a_dependent_created_meanwhile_is_a_conflict(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    one.apply(create([Task(id="a", title="A")], {}, T0))
    a = one.get("a")
    assert a is not None

    def decide(store: Store) -> Outcome:
        assert store.dependents("a") == []
        two.apply(create([Task(id="c", title="C", dependencies=("a",))], {"a": a}, T0))
        return cancel(a, None, "no longer needed", T0)

    with pytest.raises(Conflict):
        one.transact(decide)
    # decided again, the cancellation sees c and marks its dependency failed
    Coordinator(one).cancel("a", None, "no longer needed")
    assert one.get("c").failed_dependencies == ("a",)  # type: ignore[union-attr]


def test_documents_saved_from_stale_books_are_a_conflict(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    one.apply(create([Task(id="a", title="A")], {}, T0))
    before = one.state_version()

    def decide(store: Store) -> Outcome:
        assert store.state_version() == before
        two.save_state({"governor/agent/x": b"spent 5"})
        return claim(store.get("a"), ALICE, T0)  # type: ignore[arg-type]

    with pytest.raises(Conflict):
        one.transact(decide, then=lambda _: one.save_state({"governor/agent/x": b"spent 3"}))
    assert one.load_state("governor/") == {"governor/agent/x": b"spent 5"}
    assert one.state_version() == before + 1
    # a transaction that saves nothing does not care about the generation
    one.transact(lambda store: claim(store.get("a"), ALICE, T0))  # type: ignore[arg-type]


def test_two_servers_completing_the_last_two_dependencies_release_the_task(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    rounds = 40
    specs = []
    for n in range(rounds):
        specs += [Task(id=f"a{n}", title="A"), Task(id=f"b{n}", title="B")]
        specs.append(Task(id=f"c{n}", title="C", dependencies=(f"a{n}", f"b{n}")))
    Coordinator(one).create(specs)
    for n in range(rounds):
        Coordinator(one).claim(f"a{n}", ALICE)
        Coordinator(two).claim(f"b{n}", BOB)
    gate = threading.Barrier(2)

    def finish(store: RedisStore, prefix: str, agent: str) -> None:
        coordinator = Coordinator(store)
        for n in range(rounds):
            gate.wait()
            coordinator.complete(f"{prefix}{n}", agent)

    threads = [
        threading.Thread(target=finish, args=(one, "a", ALICE)),
        threading.Thread(target=finish, args=(two, "b", BOB)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [one.get(f"c{n}").state for n in range(rounds)] == [TaskState.AVAILABLE] * rounds  # type: ignore[union-attr]


def test_servers_racing_claim_each_task_once_and_one_sweeper_wins_each_expiry(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one = servers[0]
    clock = [T0]
    config = BoardConfig(lease_seconds=10)
    coordinators = [Coordinator(s, config=config, clock=lambda: clock[0]) for s in servers]
    coordinators[0].create([Task(id=f"t{i:03d}", title="x") for i in range(300)])
    won = _claim_until_none(coordinators, 12)
    assert len(won) == 300
    assert set(won.values()) == {1}
    clock[0] += 11  # every lease has run out; both servers sweep at once
    swept: list[int] = []
    sweepers = [threading.Thread(target=lambda c=c: swept.append(c.sweep())) for c in coordinators]
    for sweeper in sweepers:
        sweeper.start()
    for sweeper in sweepers:
        sweeper.join()
    assert sum(swept) == 300
    expired = [
        s.event.task_id for s in one.events_since(0, 10_000) if s.event.kind == "task.expired"
    ]
    assert sorted(expired) == sorted(won)
    assert all(task.state is TaskState.AVAILABLE for task in one.tasks())


def test_claimants_of_one_server_claim_side_by_side_without_racing_each_other(
    redis_url: str,
) -> None:
    """Over Redis, one server's claim_next calls run at once (a Redis round trip each
    need not wait for the others), and pass over the tasks the others chose, so none of
    them loses a race to another claimant of the same server."""
    store = RedisStore(redis_url)
    coordinator = Coordinator(store, config=BoardConfig(lease_seconds=3600))
    coordinator.create([Task(id=f"t{i:03d}", title="x") for i in range(400)])
    commit = store._commit
    in_flight, most, conflicts = 0, 0, 0
    lock = threading.Lock()

    def counted(txn: Any) -> int:  # the real commit, counted
        nonlocal in_flight, most, conflicts
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            return commit(txn)
        except Conflict:
            with lock:
                conflicts += 1
            raise
        finally:
            with lock:
                in_flight -= 1

    store._commit = counted  # type: ignore[method-assign]
    won = _claim_until_none([coordinator], 8)
    store.close()
    assert len(won) == 400
    assert set(won.values()) == {1}
    assert conflicts == 0
    assert most > 1  # side by side, not one at a time


def test_a_claimant_holds_its_first_task_and_other_servers_claimants_see_it_held(
    servers: tuple[RedisStore, RedisStore], redis_server: RedisServer
) -> None:
    """A claimant's first page holds its first task: a claimant of another server,
    looking meanwhile, sees it flagged as held, reads on for as many tasks nobody holds
    and holds the first of those. Holds are let go when the change is written or
    nothing is chosen, and are not logged in the append-only file (no fsync for them)."""
    one, two = servers
    logs = redis_server.directory
    before = {path: path.stat().st_size for path in logs.rglob("*.incr.aof")}
    Coordinator(one).create([Task(id=f"t{i}", title="x", created_at=T0 + i) for i in range(4)])
    pages: dict[str, list[str]] = {}

    def looks_and_leaves(store: Store) -> Outcome | None:
        pages["two"] = [task.id for task in store.available(0, 2, hold=True)]
        pages["held elsewhere"] = [i for i in pages["two"] if store.held_elsewhere(i)]
        return None  # chose nothing: lets go of t1

    def claims_first(store: Store) -> Outcome:
        page = store.available(0, 2, hold=True)
        pages["one"] = [task.id for task in page]
        two.transact(looks_and_leaves)  # meanwhile, on the other server
        pages["two again"] = [task.id for task in two.available(0, 2)]  # no hold: all
        return claim(page[0], ALICE, T0, BoardConfig())

    one.transact(claims_first)
    assert pages == {
        "one": ["t0", "t1"],
        "two": ["t0", "t1", "t2"],
        "held elsewhere": ["t0"],
        "two again": ["t0", "t1"],
    }
    assert one.get("t0").owner == ALICE  # type: ignore[union-attr]
    assert one.redis.keys("{ifab}:h:*") == []  # both let go
    # what was appended to the log of commands since (a rewrite's snapshot of the data,
    # the base file, may well hold a hold alive at that moment, with its expiry)
    logged = b"".join(path.read_bytes()[before.get(path, 0) :] for path in logs.rglob("*.incr.aof"))
    assert b"{ifab}:t:t0" in logged  # the claim is in the append-only file...
    assert b"{ifab}:h:" not in logged  # ...the holds are not


GPU = ("gpu:render",)


def _gpu_and_cpu_tasks(coordinator: Coordinator) -> None:
    coordinator.create(
        [
            Task(id="a-gpu", title="x", priority=90, required_capabilities=GPU),
            Task(id="b-gpu", title="x", priority=50, required_capabilities=GPU),
            Task(id="c-cpu", title="x", priority=50),
        ]
    )


def test_a_task_held_by_a_claimant_that_will_not_take_it_goes_to_one_that_will(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    """An agent without the GPU holds the first task (a GPU one) while it decides;
    meanwhile a GPU agent on another server takes that task, not the lower-priority
    GPU task nobody holds, nor nothing: a hold only says who is likely to take a task."""
    one, two = servers
    _gpu_and_cpu_tasks(Coordinator(one))
    got: dict[str, Any] = {}

    def cpu_agent_decides(store: Store) -> Outcome:
        page = store.available(0, 3, hold=True)  # holds a-gpu, which it cannot take
        got["gpu"] = Coordinator(two).claim_next(BOB, GPU)  # meanwhile
        return claim(next(t for t in page if not t.required_capabilities), ALICE, T0, BoardConfig())

    one.transact(cpu_agent_decides)
    assert got["gpu"] is not None
    assert got["gpu"].id == "a-gpu"
    assert one.get("c-cpu").owner == ALICE  # type: ignore[union-attr]


def test_a_task_held_by_a_claimant_of_the_same_server_that_will_not_take_it_is_taken(
    redis_url: str,
) -> None:
    """The same, both claimants on one server: the GPU agent does not wait for, nor
    pass over, the task the other claimant holds and will not take."""
    store = RedisStore(redis_url)
    coordinator = Coordinator(store)
    _gpu_and_cpu_tasks(coordinator)
    deciding, go_on = threading.Event(), threading.Event()

    def cpu_only(task: Task, now: float) -> bool:
        deciding.set()
        go_on.wait(10)  # holds a-gpu meanwhile
        return not task.required_capabilities

    got: dict[str, Any] = {}
    cpu = threading.Thread(
        target=lambda: got.update(cpu=coordinator.claim_next(ALICE, accept=cpu_only))
    )
    cpu.start()
    assert deciding.wait(10)
    try:
        got["gpu"] = coordinator.claim_next(BOB, GPU)
    finally:
        go_on.set()
        cpu.join(10)
    store.close()
    assert got["gpu"] is not None
    assert got["gpu"].id == "a-gpu"
    assert got["cpu"] is not None
    assert got["cpu"].id == "c-cpu"


def test_claimants_of_two_servers_claim_side_by_side_without_racing_each_other(
    servers: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve claimants on two servers take 400 tasks: each claimant holds the task it
    chose and passes over the others', so none loses a race while there are more tasks
    than claimants (without holds, most of them lost the first one). At the very end
    every task left is held, and a claimant races for one rather than wait on a hint."""
    import infrafabric.storage.redis as redis_store

    monkeypatch.setattr(redis_store, "HOLD_SECONDS", 60.0)  # a slow test machine: no expiry
    left_at_conflict: list[int] = []  # tasks still available when a claim lost a race
    for store in servers:
        commit = store._commit

        def counted(txn: Any, commit: Any = commit, store: RedisStore = store) -> int:
            try:
                return int(commit(txn))
            except Conflict:
                left_at_conflict.append(len(store.available(0, 100)))
                raise

        store._commit = counted  # type: ignore[method-assign]
    coordinators = [Coordinator(store, config=BoardConfig(lease_seconds=3600)) for store in servers]
    coordinators[0].create([Task(id=f"t{i:03d}", title="x") for i in range(400)])
    won = _claim_until_none(coordinators, 12)
    assert len(won) == 400
    assert set(won.values()) == {1}
    assert all(left < 12 for left in left_at_conflict), left_at_conflict
    assert servers[0].redis.keys("{ifab}:h:*") == []


def test_a_claimant_that_lost_a_race_to_another_server_spreads_out_among_equals(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    """The other server claims, between our read and our write, the task we chose: ours
    conflicts, looks again, and takes one of the first RACE_SPREAD free tasks of the best
    priority at random (never a lower one), so a crowd of losers does not race for the
    next one. A claimant that never lost takes the first, in claim order."""
    from infrafabric.coordinator import RACE_SPREAD

    one, two = servers
    ours, theirs = Coordinator(one), Coordinator(two)
    commit = one._commit
    taken_after_losing: list[int] = []
    for round_ in range(10):
        hi = [f"r{round_}-hi{i:02d}" for i in range(40)]
        ours.create(
            [Task(id=i, title="x", priority=90, created_at=T0 + n) for n, i in enumerate(hi)]
            + [Task(id=f"r{round_}-lo{n}", title="x", priority=10) for n in range(5)]
        )
        raced: list[str] = []

        def first_commit_loses(txn: Any, raced: list[str] = raced) -> int:
            if not raced:  # the other server takes our choice just before we write it
                raced.append(txn.outcomes[0].tasks[0].id)
                assert theirs.claim(raced[0], BOB).owner == BOB
            return commit(txn)

        one._commit = first_commit_loses  # type: ignore[method-assign]
        task = ours.claim_next(ALICE)
        one._commit = commit  # type: ignore[method-assign]
        assert raced == [hi[0]]
        assert task is not None
        assert task.owner == ALICE
        assert task.id in hi[1 : 1 + RACE_SPREAD]
        taken_after_losing.append(hi.index(task.id))
        again = ours.claim_next(ALICE)  # never lost: the first free one
        assert again is not None
        assert again.id == next(i for i in hi[1:] if i != task.id)
        for stale in (*hi, *(f"r{round_}-lo{n}" for n in range(5))):  # out of the next round
            current = one.get(stale)
            if current is not None and current.state is TaskState.AVAILABLE:
                ours.claim(stale, BOB)
    assert len(set(taken_after_losing)) > 1  # at random, not always the next one


PICKY = "if://agent/p"


def test_a_picky_claimant_misses_no_task_when_claims_here_move_the_list_meanwhile(
    redis_url: str,
) -> None:
    """An agent paging through the available tasks for one it qualifies for: other
    claimants of the same server take tasks off the head of the list between its page
    reads, which moves the rest up; its next page must not start past a task it never
    saw."""
    store = RedisStore(redis_url)
    coordinator = Coordinator(store, config=BoardConfig(lease_seconds=3600))
    coordinator.create(
        [
            Task(id=f"y{i:02d}", title="y", priority=90, required_capabilities=("y:y",))
            for i in range(12)
        ]
        + [Task(id="x", title="x", priority=10, required_capabilities=("x:x",))]
    )
    read = store.available
    pages: list[tuple[int, int]] = []
    # The picky claim waits for the others while it holds its agent's turn, which a
    # worker whose name hashes to the same stripe would wait for in turn (str hashes
    # change from run to run): workers of other stripes only.
    stripe = hash(PICKY) % AGENT_STRIPES
    names = (f"if://agent/w{k}" for k in range(1000))
    workers = [w for w in names if hash(w) % AGENT_STRIPES != stripe][:5]

    def available(offset: int = 0, limit: int = 64, *, hold: bool = False) -> list[Task]:
        if threading.current_thread().name == "picky":
            pages.append((offset, limit))
            if len(pages) == 3:  # meanwhile five claims here take five tasks
                others = threading.Thread(
                    target=lambda: [coordinator.claim_next(w, ["y:y"]) for w in workers],
                    daemon=True,
                )
                others.start()
                others.join(timeout=60)
                assert not others.is_alive()
        return read(offset, limit, hold=hold)

    store.available = available  # type: ignore[method-assign]
    got: list[Task | None] = []
    picky = threading.Thread(
        target=lambda: got.append(coordinator.claim_next(PICKY, ["x:x"])),
        name="picky",
        daemon=True,
    )
    picky.start()
    picky.join(timeout=60)
    assert not picky.is_alive()
    store.close()
    assert got[0] is not None
    assert got[0].id == "x"


def test_an_inbox_is_the_same_from_every_server(servers: tuple[RedisStore, RedisStore]) -> None:
    one, two = servers
    first = one.deliver(BOB, "m-1", b"hello")
    assert two.deliver(BOB, "m-1", b"hello") == first  # a resend through another server
    assert [(e.position, e.body) for e in two.pending(BOB)] == [(first, b"hello")]
    assert two.ack(BOB, first)
    assert not one.ack(BOB, first)
    assert one.pending(BOB) == []


def test_a_nonce_is_accepted_once_across_servers(servers: tuple[RedisStore, RedisStore]) -> None:
    one, two = servers
    assert one.claim_nonce(ALICE, "n-1", 60)
    assert not two.claim_nonce(ALICE, "n-1", 60)
    assert two.claim_nonce(BOB, "n-1", 60)  # nonces are per sender


def test_an_agent_heard_by_one_server_is_seen_by_every_server(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    clock = [T0]
    first, second = (Coordinator(store, clock=lambda: clock[0]) for store in servers)
    first.create([Task(id="t", title="t")])
    first.claim_next(ALICE)  # alice speaks to the first server only
    assert one.last_seen([ALICE]) == {}  # a claim writes nothing for it: the sweeper does
    assert first.seen_at(ALICE) == T0  # (its own server knows at once)
    first.share_seen()
    assert second.seen_at(ALICE) == T0
    assert str(second.health(ALICE)) == "green"
    assert second.seen_times([ALICE, BOB]) == {ALICE: T0}  # bob never spoke
    clock[0] = T0 + 60
    assert str(second.health(ALICE)) == "yellow"
    # a server whose clock lags cannot make alice older than another server heard her
    two.note_seen({ALICE: T0 - 10})
    assert one.last_seen([ALICE]) == {ALICE: T0}
    # what was heard since the last share goes in one write; nothing new, no write
    first.claim_next(ALICE)
    first.share_seen()
    assert one.last_seen([ALICE]) == {ALICE: T0 + 60}
    first.share_seen()
    assert second.seen_at(ALICE) == T0 + 60


def test_claim_keys_sort_as_the_claim_order() -> None:
    tasks = [
        Task(id="z", title="x", priority=100, created_at=5.0),
        Task(id="a", title="x", priority=100, created_at=5.0),
        Task(id="b", title="x", priority=0, created_at=1.0),
        Task(id="c", title="x", priority=50, created_at=1e9),
        Task(id="d", title="x", priority=50, created_at=2.5),
        Task(id="e", title="x", priority=100, filler=True),
    ]
    by_key = sorted(tasks, key=claim_key)
    assert [t.id for t in by_key] == ["a", "z", "d", "c", "b", "e"]


def test_an_unreachable_redis_fails_fast_and_a_restarted_one_is_used_again(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    url = server.url
    store = RedisStore(url, timeout=2)
    Coordinator(store).create([Task(id="a", title="A")])
    server.stop()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        store.get("a")
    with pytest.raises(StoreUnavailable):  # a new store: refused at start
        RedisStore(url, timeout=2)
    restarted = RedisServer(tmp_path / "redis")
    restarted.port = server.port
    restarted.start()
    assert store.get("a").title == "A"  # type: ignore[union-attr]  # the AOF kept it
    store.close()
    restarted.stop()


def test_a_redis_too_old_for_the_store_is_refused_at_once_naming_its_version(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams and script effects came with Redis 5.0: an older one is refused when the
    store opens, not at the first claim with a script error. (No old Redis here: the
    real one is made to look too old by asking for a version beyond it.)"""
    import infrafabric.storage.redis as redis_store

    assert not redis_version_supported("4.0.14")
    assert redis_version_supported("5.0.0")
    assert redis_version_supported("7.0.15")
    assert redis_version_supported("")  # unreadable: not refused
    RedisStore(redis_url).close()  # the Redis of the tests is new enough
    monkeypatch.setattr(redis_store, "OLDEST_REDIS", (99, 0))
    with pytest.raises(StoreError, match=r"is version \d+\.\d+.*needs Redis 99\.0 or later"):
        RedisStore(redis_url)


def test_a_bad_url_is_a_clear_error_without_its_password() -> None:
    with pytest.raises(StoreError, match="not a Redis URL"):
        RedisStore("http://127.0.0.1:1/0")
    assert redacted("redis://user:secret@host:6380/1") == "redis://user:***@host:6380/1"


def test_a_nonce_spent_with_a_change_is_spent_only_if_the_change_is_written(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    one.spend_nonce_with_change(ALICE, "n-1", 60)
    one.apply(create([Task(id="a", title="A")], {}, T0))
    assert not one.unspent_nonce()  # spent with the change
    two.spend_nonce_with_change(ALICE, "n-1", 60)  # the same message, another server
    with pytest.raises(Replayed):
        two.apply(create([Task(id="b", title="B")], {}, T0))
    assert two.get("b") is None  # nothing of the replay was written
    assert not two.claim_nonce(ALICE, "n-1", 60)
    # a change that conflicts spends nothing; deciding again spends it with the change
    one.spend_nonce_with_change(ALICE, "n-2", 60)
    with pytest.raises(Conflict):
        one.apply(create([Task(id="a", title="again")], {}, T0))
    assert two.claim_nonce(BOB, "n-2", 60)  # (another sender's n-2: unrelated)
    one.apply(create([Task(id="c", title="C")], {}, T0))
    assert not one.unspent_nonce()
    assert not two.claim_nonce(ALICE, "n-2", 60)
    one.spend_nonce_with_change(ALICE, "n-3", 60)  # a message that changed nothing
    assert one.unspent_nonce()
    assert two.claim_nonce(ALICE, "n-3", 60)


def test_books_saved_outside_a_change_from_a_stale_read_are_refused(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    seen = one.state_version()
    two.save_state({"governor/agent/x": b"charged by two"})
    with pytest.raises(Conflict):
        one.save_state({"governor/agent/x": b"reset by one"}, expected=seen)
    assert one.load_state("governor/") == {"governor/agent/x": b"charged by two"}
    one.save_state({"governor/agent/x": b"reset by one"}, expected=seen + 1)


def test_one_sequencer_appends_and_a_stale_one_cannot_fork_the_log(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    first, second = RedisWitnessLog(one), RedisWitnessLog(two)
    assert first.lead("server-1", seconds=0.3)
    assert not second.lead("server-2", seconds=0.3)  # held
    first.append([b"a", b"b", b"c"], source="board-events", position=3)
    time.sleep(0.4)  # server-1 stalls past its lease...
    assert second.lead("server-2", seconds=5)  # ...and server-2 takes over
    second.refresh()
    second.append([b"d"], source="board-events", position=4)
    with pytest.raises(LogMoved):  # server-1 wakes up and appends from its old size
        first.append([b"x"], source="board-events", position=4)
    assert first.size == 4  # it re-read the log
    assert [entry for _, _, entry in second.entries(0, 10)] == [b"a", b"b", b"c", b"d"]
    assert second.cursor("board-events") == 4
    assert first.root() == second.root()


def test_a_log_that_went_back_in_redis_stops_growing(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, _ = servers
    log = RedisWitnessLog(one)
    log.append([b"a", b"b"])
    one.redis.set(f"{one.prefix}w:size", 1)  # as if Redis lost the last append
    log.refresh()
    assert "went back from 2 to 1" in log.damaged
    with pytest.raises(StoreError, match="cannot grow"):
        log.append([b"c"])


def test_a_dependency_finished_while_its_dependent_is_created_is_a_conflict(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = servers
    Coordinator(one).create([Task(id="a", title="A")])
    Coordinator(one).claim("a", ALICE)
    spec = Task(id="c", title="C", dependencies=("a",))

    def decide(store: Store) -> Outcome:
        known = store.get_many(["a", "c"])
        Coordinator(two).complete("a", ALICE)  # meanwhile, through the other server
        return create([spec], known, T0)  # c would wait for ever on a finished task

    with pytest.raises(Conflict):
        one.transact(decide)
    Coordinator(one).create([spec])  # decided again: a is done, c is available at once
    assert one.get("c").state is TaskState.AVAILABLE  # type: ignore[union-attr]


def test_the_relay_follows_an_event_counter_that_went_back(
    servers: tuple[RedisStore, RedisStore],
) -> None:
    one, _ = servers
    Coordinator(one).create([Task(id=f"t{i}", title="x") for i in range(5)])
    relay = Relay(one)
    assert relay._positions[relay._events_key] == "5-0"
    one.redis.set(f"{one.prefix}seq", 2)  # as if Redis lost the last three events (a
    # real loss takes their stream entries too, so event 3 can be written again)
    relay._follow_a_counter_that_went_back()
    assert relay._positions[relay._events_key] == "2-0"  # from where new events come


def test_a_redis_that_keeps_no_append_only_file_is_named_at_start(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stock Redis keeps none: killed, it loses every change acknowledged since its last
    snapshot. The server started on it without a word."""
    volatile = RedisServer(tmp_path / "volatile", appendonly="no").start()
    try:
        with caplog.at_level("WARNING", logger="infrafabric.storage.redis"):
            RedisStore(volatile.url).close()
            RedisStore(redis_url).close()  # (the tests' Redis keeps one: no word)
        warned = [r.getMessage() for r in caplog.records if "append-only" in r.getMessage()]
        assert warned == [
            f"Redis at {volatile.url} keeps no append-only file (appendonly no): if it is"
            " killed, every change the fabric acknowledged since its last snapshot is lost;"
            " set appendonly yes with appendfsync always (see docs/operations.md)"
        ]
    finally:
        volatile.stop()


def test_a_keyring_shared_late_never_takes_back_a_revocation(redis_url: str) -> None:
    """Shared whole, a copy made before another server revoked a key and saved after it
    put the key back active in Redis, for every server that read it then."""
    agent = agent_id("alice")
    one, two, three = (SigningIdentity.generate(agent) for _ in range(3))
    now = time.time()
    record = {
        i.kid: new_key_record(agent, i.public_key, version=1, now=now) for i in (one, two, three)
    }

    def document(*records: KeyRecord) -> bytes:
        return msgspec.json.encode(KeyringFile(format=KEYRING_FORMAT, keys=records))

    store = RedisStore(redis_url)
    try:
        store.share_keyring("keyring/alice", document(record[one.kid], record[two.kid]))
        revoked = Keyring([record[one.kid]]).revoke(one.kid, now)
        store.share_keyring("keyring/alice", document(revoked))  # another server's recall
        before = store.state_version()
        store.share_keyring("keyring/alice", document(record[one.kid], record[three.kid]))  # late
        shared = msgspec.json.decode(
            store.load_state("keyring/")["keyring/alice"], type=KeyringFile
        )
        states = {key.kid: str(key.state) for key in shared.keys}
        assert states == {one.kid: "revoked", two.kid: "active", three.kid: "active"}
        time.sleep(0.1)  # (the generation is read at most every 50 ms)
        assert store.state_version() > before  # the other servers see that keys changed
    finally:
        store.close()
