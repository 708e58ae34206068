"""The coordinator over real stores: races between threads, leases under a manual clock."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrafabric.board.model import Blocker, BoardEvent, Task, TaskState
from infrafabric.board.rules import BoardConfig, Health, LeaseLost, NotOwner
from infrafabric.board.transitions import IllegalTransition
from infrafabric.coordinator import Coordinator, TaskNotFound
from infrafabric.storage.base import Store
from infrafabric.storage.memory import MemoryStore
from infrafabric.storage.redis import RedisStore
from infrafabric.storage.sqlite import SqliteStore

T0 = 1_000_000.0
ALICE, BOB = "if://agent/alice", "if://agent/bob"


class ManualClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    engine: Store
    if request.param == "memory":
        engine = MemoryStore()
    elif request.param == "redis":
        engine = RedisStore(request.getfixturevalue("redis_url"))
    else:
        engine = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    yield engine
    engine.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def coordinator(store: Store, clock: ManualClock) -> Coordinator:
    return Coordinator(store, clock=clock)


def test_claim_next_respects_priority_capabilities_and_keeps_fillers_last(
    coordinator: Coordinator,
) -> None:
    coordinator.create(
        [
            Task(id="gpu", title="train", priority=99, required_capabilities=("compute:gpu",)),
            Task(id="fill", title="tidy docs", priority=95, filler=True),
            Task(id="mid", title="review", priority=60),
        ]
    )
    assert coordinator.claim_next(ALICE, ["code:python"]).id == "mid"  # type: ignore[union-attr]
    assert (
        coordinator.claim_next(ALICE, ["code:python"]) is None
    )  # the filler waits for a blocked agent
    assert coordinator.claim("fill", ALICE).owner == ALICE  # unless claimed on purpose
    assert coordinator.claim_next(BOB, ["compute:gpu"]).id == "gpu"  # type: ignore[union-attr]


def test_a_crashed_agents_task_is_taken_over_after_its_lease(
    coordinator: Coordinator, clock: ManualClock
) -> None:
    coordinator.create([Task(id="a", title="A")])
    coordinator.claim("a", ALICE)
    clock.advance(100)
    coordinator.heartbeat("a", ALICE)
    clock.advance(121)
    with pytest.raises(LeaseLost):  # expired, not yet swept: the lease is gone all the same
        coordinator.heartbeat("a", ALICE)
    clock.advance(-121)
    clock.advance(119)
    assert coordinator.sweep() == 0
    clock.advance(2)  # alice stopped heartbeating: 121 s since the last one
    assert coordinator.sweep() == 1
    task = coordinator.get("a")
    assert (task.state, task.attempts, task.last_owner) == (TaskState.AVAILABLE, 1, ALICE)
    assert coordinator.claim_next(BOB).id == "a"  # type: ignore[union-attr]
    with pytest.raises(NotOwner):
        coordinator.complete("a", ALICE, {"late": True})  # alice wakes up too late
    coordinator.complete("a", BOB, {"ok": True})
    assert coordinator.get("a").result == {"ok": True}


def test_claiming_a_taken_task_says_so(coordinator: Coordinator) -> None:
    coordinator.create([Task(id="a", title="A")])
    coordinator.claim("a", ALICE)
    with pytest.raises(IllegalTransition, match="claimed"):
        coordinator.claim("a", BOB)
    with pytest.raises(TaskNotFound):
        coordinator.claim("nope", BOB)


def test_completion_releases_dependents_and_events_reach_listeners(
    coordinator: Coordinator,
) -> None:
    heard: list[BoardEvent] = []
    coordinator.listen(heard.extend)
    coordinator.create([Task(id="a", title="A"), Task(id="b", title="B", dependencies=("a",))])
    coordinator.claim("a", ALICE)
    coordinator.complete("a", ALICE)
    assert coordinator.get("b").state is TaskState.AVAILABLE
    assert [event.kind for event in heard] == [
        "task.created",
        "task.created",
        "task.claimed",
        "task.completed",
        "task.released",
    ]


def test_a_failure_for_good_shows_on_the_waiting_tasks_below_its_dependents(
    coordinator: Coordinator,
) -> None:
    coordinator.create(
        [
            Task(id="a", title="A"),
            Task(id="b", title="B", dependencies=("a",)),
            Task(id="c", title="C", dependencies=("b",)),
        ]
    )
    coordinator.claim("a", ALICE)
    coordinator.fail("a", ALICE, "broken", retry=False)
    assert [coordinator.get(t).failed_dependencies for t in ("b", "c")] == [("a",), ("a",)]
    coordinator.create([Task(id="d", title="D", dependencies=("c",))])
    assert coordinator.get("d").failed_dependencies == ("a",)


def test_blocking_offers_a_filler_and_help_reaches_qualified_agents(
    coordinator: Coordinator,
) -> None:
    coordinator.create([Task(id="a", title="A"), Task(id="docs", title="docs", filler=True)])
    coordinator.claim("a", ALICE)
    blocked, filler = coordinator.block(
        "a", ALICE, Blocker(type="access", description="needs a token")
    )
    assert blocked.state is TaskState.BLOCKED
    assert filler is not None
    assert filler.id == "docs"
    agents = {ALICE: ["ops:k8s"], BOB: ["ops:k8s"], "if://agent/carol": ["code:python"]}
    assert coordinator.request_help("a", ALICE, ["ops:k8s"], agents) == [BOB]
    kinds = [stored.event.kind for stored in coordinator.store.events_since(0)]
    assert kinds[-2:] == ["filler.offered", "help.requested"] or "help.requested" in kinds


def test_help_with_nothing_named_goes_to_agents_qualified_for_the_task_itself(
    coordinator: Coordinator,
) -> None:
    """An empty ``needed`` invited anyone at all (every agent has every capability of an
    empty set); the governor already read it as the task's own needs."""
    coordinator.create([Task(id="a", title="A", required_capabilities=("ops:k8s",))])
    agents = {ALICE: ["ops:k8s"], "if://agent/carol": ["code:python"], BOB: ["ops:k8s"]}
    coordinator.claim("a", ALICE)
    assert coordinator.request_help("a", ALICE, [], agents) == [BOB]
    [stored] = [s for s in coordinator.store.events_since(0) if s.event.kind == "help.requested"]
    assert stored.event.payload == {"needed": ["ops:k8s"], "invited": [BOB]}


def test_blocking_reads_the_fillers_not_the_whole_board(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offer read every available task (decoding them all, under the write lock: on a
    board of 40,000 that held every claim up); it reads the fillers, from the claim
    order's index."""
    coordinator.create(
        [Task(id="a", title="A")]
        + [Task(id=f"work-{n}", title="W") for n in range(20)]
        + [Task(id="fill-low", title="F", filler=True, priority=10)]
        + [Task(id="fill-high", title="F", filler=True, priority=80)]
    )
    coordinator.claim("a", ALICE)

    def whole_board(*args: object, **kwargs: object) -> list[Task]:
        raise AssertionError("the offer read the whole board")

    monkeypatch.setattr(coordinator.store, "tasks", whole_board)
    _, filler = coordinator.block("a", ALICE, Blocker(type="access", description="a token"))
    assert filler is not None
    assert filler.id == "fill-high"


def test_help_chosen_by_the_governor_is_still_capped_at_max_helpers(
    store: Store, clock: ManualClock
) -> None:
    coordinator = Coordinator(store, config=BoardConfig(max_helpers=2), clock=clock)
    coordinator.create([Task(id="a", title="A")])
    coordinator.claim("a", ALICE)
    chosen = [f"if://agent/helper-{n}" for n in range(5)]
    invited = coordinator.request_help("a", ALICE, ["ops:k8s"], {}, helpers=chosen)
    assert invited == chosen[:2]
    (event,) = [s.event for s in store.events_since(0) if s.event.kind == "help.requested"]
    assert event.payload["invited"] == chosen[:2]


def test_agent_health_follows_its_last_action(coordinator: Coordinator, clock: ManualClock) -> None:
    coordinator.create([Task(id="a", title="A")])
    coordinator.claim("a", ALICE)
    assert coordinator.health(ALICE) is Health.GREEN
    clock.advance(60)
    assert coordinator.health(ALICE) is Health.YELLOW
    clock.advance(300)
    assert coordinator.health(ALICE) is Health.RED
    assert coordinator.health(BOB) is Health.RED


@pytest.mark.parametrize("agents", [100])
def test_many_threads_race_and_every_task_is_claimed_and_completed_once(
    store: Store, agents: int
) -> None:
    coordinator = Coordinator(store, config=BoardConfig(lease_seconds=3600))
    coordinator.create([Task(id=f"t{i:04d}", title="x") for i in range(1000)])
    completed_by: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(agents)

    def agent(name: str) -> None:
        start.wait()
        while (task := coordinator.claim_next(name)) is not None:
            coordinator.complete(task.id, name, {"by": name})
            with lock:
                completed_by[task.id] += 1

    threads = [
        threading.Thread(target=agent, args=(f"if://agent/a{i:03d}",)) for i in range(agents)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(completed_by) == [f"t{i:04d}" for i in range(1000)]
    assert set(completed_by.values()) == {1}
    kinds = Counter(stored.event.kind for stored in store.events_since(0, limit=100_000))
    assert kinds["task.claimed"] == 1000
    assert kinds["task.completed"] == 1000
    assert all(task.state is TaskState.COMPLETED for task in coordinator.tasks())


def test_spreading_picks_among_the_first_free_tasks_of_the_best_priority_only() -> None:
    """What a claimant that lost a race to another server does (see claim_next): one of
    the first ``spread`` tasks it accepts, at random, never one of a lower priority than
    the first; ``spread`` 1 is the first, in claim order."""
    from infrafabric.coordinator import _best_for

    store = MemoryStore()
    Coordinator(store).create(
        [Task(id=f"top{i}", title="x", priority=90, created_at=T0 + i) for i in range(3)]
        + [Task(id=f"mid{i:02d}", title="x", priority=50, created_at=T0 + i) for i in range(30)]
    )

    def anything(task: Task, now: float) -> bool:
        return True

    def not_top(task: Task, now: float) -> bool:
        return not task.id.startswith("top")

    assert {_best_for(store, anything, T0).id for _ in range(20)} == {"top0"}  # type: ignore[union-attr]
    among_top = {_best_for(store, anything, T0, spread=16).id for _ in range(200)}  # type: ignore[union-attr]
    assert among_top == {"top0", "top1", "top2"}  # all three, and never a lower priority
    spread = {_best_for(store, not_top, T0, spread=16).id for _ in range(300)}  # type: ignore[union-attr]
    assert spread == {f"mid{i:02d}" for i in range(16)}


def test_a_claim_rolled_back_with_its_batch_is_offered_again(tmp_path: Path) -> None:
    """On SQLite a claim is part of the batch of messages it came in; if that batch's
    commit fails, the task is available again and the next claim_next offers it."""
    from infrafabric.errors import StoreError

    store = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    coordinator = Coordinator(store)
    coordinator.create([Task(id="t1", title="the only task")])
    claimed: list[Task | None] = []

    def batch_that_fails() -> None:
        with store.batch():
            claimed.append(coordinator.claim_next(ALICE))
            raise StoreError("the batch's commit failed")

    with pytest.raises(StoreError):
        batch_that_fails()
    assert claimed[0] is not None
    assert store.get("t1").state is TaskState.AVAILABLE  # type: ignore[union-attr]
    again = coordinator.claim_next(BOB)
    assert again is not None
    assert again.id == "t1"
    store.close()


def test_tasks_reserved_by_others_that_an_agent_cannot_take_do_not_make_it_wait(
    store: Store,
) -> None:
    """A claimant waits for another's reservation to be let go only if the reserved
    task is one it would take (it may come back); an agent qualifying for none of the
    reserved tasks, and for nothing else, is told at once that nothing is available."""
    coordinator = Coordinator(store)
    coordinator.create([Task(id="gpu-job", title="x", required_capabilities=("render:gpu",))])
    held = coordinator._reserve(store.get("gpu-job"))  # type: ignore[arg-type]
    assert held  # another claimant of this process is claiming it
    waited: list[int] = []
    coordinator._await_release = waited.append  # type: ignore[method-assign]
    assert coordinator.claim_next(ALICE, ["code:python"]) is None
    assert waited == []


def test_a_blocked_task_stays_with_an_owner_that_is_heard_from_until_it_escalates(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A blocked agent works a filler task meanwhile: its heartbeats go there. With the
    default thresholds (a 120 s lease, escalation after 30 min) the blocked task used to
    go back to the board after one lease, an attempt spent and the blocker gone, so the
    escalation never came. Now it stays while its owner is heard from and escalates;
    after that only heartbeats of its own keep it (one lease later it goes back), so
    proof of life elsewhere cannot hold it forever."""
    store = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    coordinator = Coordinator(store, config=BoardConfig(), clock=clock)  # the defaults
    coordinator.create([Task(id="a", title="A"), Task(id="f", title="filler", filler=True)])
    coordinator.claim("a", ALICE)
    _, offered = coordinator.block("a", ALICE, Blocker(type="human", description="review"))
    assert offered is not None
    coordinator.claim(offered.id, ALICE)
    for _ in range(31):  # 31 minutes: heartbeats on the filler, a sweep each minute
        clock.advance(60)
        coordinator.heartbeat("f", ALICE)
        coordinator.sweep()
    task = coordinator.get("a")
    assert (task.state, task.owner, task.attempts) == (TaskState.BLOCKED, ALICE, 0)
    kinds = [stored.event.kind for stored in store.events_since(0)]
    assert "task.expired" not in kinds
    assert kinds.count("task.escalated") == 1
    # escalated: the filler's heartbeats no longer hold it; one lease on, it goes back
    for _ in range(3):
        clock.advance(60)
        coordinator.heartbeat("f", ALICE)
        coordinator.sweep()
    returned = coordinator.get("a")
    assert (returned.state, returned.owner, returned.last_owner) == (
        TaskState.AVAILABLE,
        None,
        ALICE,
    )
    store.close()


def test_the_owner_of_a_blocked_task_may_act_on_it_until_the_sweeper_returns_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Between the end of a blocked task's lease and the sweep that renews it, the
    owner's own unblock was refused as LEASE_LOST (and an MCP agent told to claim a task
    it still held). Its acting is proof of life enough."""
    store = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    coordinator = Coordinator(store, config=BoardConfig(), clock=clock)
    coordinator.create([Task(id="a", title="A")])
    coordinator.claim("a", ALICE)
    coordinator.block("a", ALICE, Blocker(type="human", description="review"))
    clock.advance(121)  # the lease ran out; no sweep yet
    with pytest.raises(NotOwner):
        coordinator.unblock("a", BOB)  # still nobody else's
    resumed = coordinator.unblock("a", ALICE)
    assert (resumed.state, resumed.lease_expires_at) == (TaskState.IN_PROGRESS, T0 + 121 + 120)
    clock.advance(121)  # a task that is not blocked loses its lease as before
    with pytest.raises(LeaseLost):
        coordinator.heartbeat("a", ALICE)
    store.close()


def test_a_task_blocked_past_the_threshold_is_escalated_by_the_sweep_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    """The sweeper is what turns a long blocker into an escalation (the rule alone is
    pure): past ``escalate_blocked_after`` one sweep logs and publishes ``task.escalated``
    and marks the blocker, before it nothing happens, and later sweeps do not repeat it."""
    store = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    config = BoardConfig(lease_seconds=3600, escalate_blocked_after=60)
    coordinator = Coordinator(store, config=config, clock=clock)
    heard: list[BoardEvent] = []
    coordinator.listen(heard.extend)
    coordinator.create([Task(id="a", title="A")])
    coordinator.claim("a", ALICE)
    coordinator.block("a", ALICE, Blocker(type="human", description="needs review"))

    def escalations() -> list[BoardEvent]:
        logged = [stored.event for stored in store.events_since(0)]
        return [event for event in logged if event.kind == "task.escalated"]

    clock.advance(60)  # blocked exactly as long as allowed: not past it yet
    assert coordinator.sweep() == 0
    assert escalations() == []
    assert coordinator.get("a").blocker.escalated_at is None  # type: ignore[union-attr]

    clock.advance(1)
    assert coordinator.sweep() == 1
    [escalated] = escalations()
    assert (escalated.task_id, escalated.actor, escalated.at) == ("a", ALICE, T0 + 61)
    assert escalated.payload["blocked_for"] == 61
    assert [event.kind for event in heard if event.kind == "task.escalated"] == ["task.escalated"]
    task = coordinator.get("a")
    assert task.state is TaskState.BLOCKED  # escalated, still the owner's
    assert task.blocker.escalated_at == T0 + 61  # type: ignore[union-attr]

    clock.advance(600)
    assert coordinator.sweep() == 0  # once only
    assert len(escalations()) == 1
    assert [event.kind for event in heard].count("task.escalated") == 1
    store.close()
