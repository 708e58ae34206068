"""Board operations as pure functions, driven by a manual clock."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from infrafabric.board.dag import DependencyError
from infrafabric.board.model import Blocker, Task, TaskState
from infrafabric.board.rules import (
    BoardConfig,
    Health,
    InvalidTask,
    LeaseLost,
    NotOwner,
    Outcome,
    block,
    cancel,
    claim,
    complete,
    create,
    escalate_blocked,
    expire,
    fail,
    give_up,
    health,
    heartbeat,
    pick_next,
    progress,
    qualifies,
    select_helpers,
    unblock,
)
from infrafabric.board.transitions import IllegalTransition

T0 = 1_000_000.0
ALICE, BOB = "if://agent/alice", "if://agent/bob"


class Board:
    """Applies outcomes to a dict with the compare-and-set rule a store follows."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.events: list[str] = []

    def apply(self, outcome: Outcome) -> Outcome:
        for task in outcome.tasks:
            current = self.tasks.get(task.id)
            expected = None if task.id in outcome.created else task.version - 1
            assert (current.version if current else None) == expected, f"conflict on {task.id}"
        for task in outcome.tasks:
            self.tasks[task.id] = task
        self.events.extend(f"{event.kind}:{event.task_id}" for event in outcome.events)
        return outcome

    def add(self, *specs: Task, now: float = T0) -> None:
        self.apply(create(list(specs), self.tasks, now))

    def __getitem__(self, task_id: str) -> Task:
        return self.tasks[task_id]

    def dependents(self, task_id: str) -> list[Task]:
        return [task for task in self.tasks.values() if task_id in task.dependencies]

    def state_of(self, task_id: str) -> TaskState | None:
        task = self.tasks.get(task_id)
        return None if task is None else task.state


def spec(
    task_id: str, *deps: str, priority: int = 50, caps: Iterable[str] = (), filler: bool = False
) -> Task:
    return Task(
        id=task_id, title=f"do {task_id}", dependencies=deps, priority=priority,
        required_capabilities=tuple(caps), filler=filler,
    )  # fmt: skip


@pytest.fixture
def board() -> Board:
    return Board()


def test_claim_then_complete(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    assert board["a"].state is TaskState.CLAIMED
    assert board["a"].lease_expires_at == T0 + 120
    board.apply(progress(board["a"], ALICE, 50, "half way", T0 + 10))
    assert board["a"].state is TaskState.IN_PROGRESS
    assert board["a"].progress == 50
    board.apply(complete(board["a"], ALICE, {"ok": True}, T0 + 20))
    done = board["a"]
    assert (done.state, done.result, done.owner, done.last_owner) == (
        TaskState.COMPLETED,
        {"ok": True},
        None,
        ALICE,
    )
    assert done.version == 4
    assert board.events == [
        "task.created:a",
        "task.claimed:a",
        "task.progress:a",
        "task.completed:a",
    ]


def test_exactly_one_of_two_racing_claims_lands(board: Board) -> None:
    board.add(spec("a"))
    seen = board["a"]  # both agents read version 1
    board.apply(claim(seen, ALICE, T0))
    with pytest.raises(AssertionError, match="conflict"):
        board.apply(claim(seen, BOB, T0))
    assert board["a"].owner == ALICE
    with pytest.raises(IllegalTransition):
        claim(board["a"], BOB, T0)  # re-reading shows it is taken


def test_only_the_owner_acts_and_only_within_its_lease(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    for act in (
        lambda t: heartbeat(t, BOB, T0),
        lambda t: progress(t, BOB, 25, "", T0),
        lambda t: complete(t, BOB, {}, T0),
        lambda t: fail(t, BOB, "x", T0),
        lambda t: give_up(t, BOB, T0),
        lambda t: block(t, BOB, Blocker(type="x", description="y"), T0),
    ):
        with pytest.raises(NotOwner):
            act(board["a"])
    with pytest.raises(LeaseLost):
        complete(board["a"], ALICE, {}, T0 + 121)  # the lease is gone before expire() runs


def test_heartbeats_renew_the_lease(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(heartbeat(board["a"], ALICE, T0 + 100))
    assert board["a"].lease_expires_at == T0 + 220
    assert expire(board["a"], T0 + 200) == Outcome()


def test_an_expired_lease_returns_the_task_and_counts_an_attempt(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(progress(board["a"], ALICE, 25, "started", T0 + 1))
    assert expire(board["a"], T0 + 121) == Outcome()  # valid through its last second
    outcome = board.apply(expire(board["a"], T0 + 122))
    task = board["a"]
    assert (task.state, task.owner, task.attempts, task.last_owner) == (
        TaskState.AVAILABLE,
        None,
        1,
        ALICE,
    )
    assert task.progress == 0  # the next attempt starts over
    assert outcome.events[0].payload["old_owner"] == ALICE
    board.apply(claim(board["a"], BOB, T0 + 123))  # takeover
    assert board["a"].owner == BOB


def test_a_blocked_lease_is_renewed_from_when_its_owner_was_seen_never_the_future(
    board: Board,
) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(block(board["a"], ALICE, Blocker(type="human", description="d"), T0))
    late = T0 + 200  # the lease (120 s) ran out
    assert board.apply(expire(board["a"], late, owner_seen_at=T0 + 150)).events == ()
    assert board["a"].lease_expires_at == T0 + 150 + 120  # from the proof of life
    later = T0 + 300
    ahead = later + 10_000  # another server's clock, far ahead: clamped to now
    board.apply(expire(board["a"], later, owner_seen_at=ahead))
    assert (board["a"].state, board["a"].lease_expires_at) == (TaskState.BLOCKED, later + 120)
    # silent for longer than a lease: returned as any other task
    outcome = board.apply(expire(board["a"], later + 500, owner_seen_at=later + 100))
    assert [event.kind for event in outcome.events] == ["task.expired"]
    assert board["a"].state is TaskState.AVAILABLE


def test_three_ended_attempts_kill_the_task(board: Board) -> None:
    board.add(spec("a"), spec("b", "a"))
    for attempt in range(3):
        board.apply(claim(board["a"], ALICE, T0 + attempt * 200))
        board.apply(expire(board["a"], T0 + attempt * 200 + 121, board.dependents("a")))
    assert board["a"].state is TaskState.DEAD
    assert board["a"].attempts == 3
    assert board["b"].failed_dependencies == ("a",)  # visible on the waiting task
    assert "task.dead:a" in board.events


def test_failing_with_and_without_retry(board: Board) -> None:
    board.add(spec("a"), spec("b"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(fail(board["a"], ALICE, "flaky network", T0 + 1))
    assert (board["a"].state, board["a"].attempts, board["a"].failure) == (
        TaskState.AVAILABLE,
        1,
        "flaky network",
    )
    board.apply(claim(board["b"], ALICE, T0))
    board.apply(fail(board["b"], ALICE, "impossible", T0 + 1, retry=False))
    assert board["b"].state is TaskState.FAILED


def test_giving_up_is_not_an_attempt(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(give_up(board["a"], ALICE, T0 + 1))
    assert (board["a"].state, board["a"].attempts) == (TaskState.AVAILABLE, 0)


def test_dependencies_hold_tasks_until_completed_then_release_by_priority(board: Board) -> None:
    board.add(
        spec("a"), spec("b"), spec("low", "a", "b", priority=10), spec("high", "a", priority=90)
    )
    assert board["low"].state is TaskState.WAITING
    board.apply(claim(board["a"], ALICE, T0))
    outcome = board.apply(
        complete(board["a"], ALICE, {}, T0 + 1, board.dependents("a"), board.state_of)
    )
    assert [task.id for task in outcome.tasks[1:]] == ["high"]  # low still waits for b
    board.apply(claim(board["b"], BOB, T0))
    board.apply(complete(board["b"], BOB, {}, T0 + 2, board.dependents("b"), board.state_of))
    assert board["low"].state is TaskState.AVAILABLE


def test_release_order_is_priority_then_age(board: Board) -> None:
    board.add(spec("root"))
    board.add(spec("old", "root", priority=50), now=T0)
    board.add(spec("young", "root", priority=50), now=T0 + 5)
    board.add(spec("urgent", "root", priority=80), now=T0 + 9)
    board.apply(claim(board["root"], ALICE, T0 + 10))
    outcome = complete(board["root"], ALICE, {}, T0 + 11, board.dependents("root"), board.state_of)
    assert [task.id for task in outcome.tasks[1:]] == ["urgent", "old", "young"]


def test_tasks_created_after_their_dependencies_ended(board: Board) -> None:
    board.add(spec("a"), spec("x"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(complete(board["a"], ALICE, {}, T0 + 1))
    board.apply(cancel(board["x"], None, "not needed", T0 + 1))
    board.add(spec("after-a", "a"), spec("after-x", "x"))
    assert board["after-a"].state is TaskState.AVAILABLE
    assert board["after-x"].state is TaskState.WAITING
    assert board["after-x"].failed_dependencies == ("x",)


def test_a_task_ended_for_good_shows_on_every_waiting_task_below_it(board: Board) -> None:
    # c waits on b, which waits on a: once a fails for good neither can ever run
    board.add(spec("a"), spec("b", "a"), spec("c", "b"), spec("c2", "b"), spec("d", "c", "c2"))
    board.apply(claim(board["a"], ALICE, T0))
    outcome = board.apply(
        fail(
            board["a"], ALICE, "broken", T0 + 1, retry=False,
            dependents=board.dependents("a"), downstream=board.dependents,
        )
    )  # fmt: skip
    for task_id in ("b", "c", "c2", "d"):  # the cause, once each (d is below it twice)
        assert board[task_id].failed_dependencies == ("a",), task_id
        assert board[task_id].state is TaskState.WAITING
    dependency_failed = [
        event for event in outcome.events if event.kind == "task.dependency_failed"
    ]
    assert [(e.task_id, e.payload.get("via")) for e in dependency_failed] == [
        ("b", None), ("c", "b"), ("c2", "b"), ("d", "c"),
    ]  # fmt: skip
    assert {e.payload["dependency"] for e in dependency_failed} == {"a"}
    # tasks created below later show it too, in a batch as well
    board.add(spec("e", "b"), spec("g", "f"), spec("f", "d"), now=T0 + 2)
    for task_id in ("e", "f", "g"):
        assert board[task_id].failed_dependencies == ("a",), task_id


def test_death_and_cancellation_show_below_as_failure_does(board: Board) -> None:
    board.add(spec("a"), spec("b", "a"), spec("c", "b"), spec("x"), spec("y", "x"), spec("z", "y"))
    for attempt in range(3):
        board.apply(claim(board["a"], ALICE, T0 + attempt * 200))
        board.apply(
            expire(
                board["a"], T0 + attempt * 200 + 121, board.dependents("a"),
                downstream=board.dependents,
            )
        )  # fmt: skip
    assert board["a"].state is TaskState.DEAD
    assert board["c"].failed_dependencies == ("a",)
    board.apply(cancel(board["x"], None, "not needed", T0, board.dependents("x"), board.dependents))
    assert board["z"].failed_dependencies == ("x",)
    # a waiting task cancelled in turn is a cause of its own for those below it
    board.apply(cancel(board["b"], None, "moot", T0 + 1, board.dependents("b"), board.dependents))
    assert board["c"].failed_dependencies == ("a", "b")


def test_a_failure_that_will_be_retried_shows_nowhere_and_reads_nothing_below(
    board: Board,
) -> None:
    board.add(spec("a"), spec("b", "a"), spec("c", "b"))
    read: list[str] = []

    def downstream(task_id: str) -> list[Task]:
        read.append(task_id)
        return board.dependents(task_id)

    board.apply(claim(board["a"], ALICE, T0))
    board.apply(
        fail(
            board["a"],
            ALICE,
            "flaky",
            T0 + 1,
            dependents=board.dependents("a"),
            downstream=downstream,
        )
    )
    assert board["a"].state is TaskState.AVAILABLE
    assert (board["b"].failed_dependencies, board["c"].failed_dependencies, read) == ((), (), [])


def test_cycles_are_refused_at_creation(board: Board) -> None:
    with pytest.raises(DependencyError, match="cycle"):
        board.add(spec("a", "b"), spec("b", "a"))
    assert board.tasks == {}


def test_claim_next_picks_highest_priority_the_agent_qualifies_for(board: Board) -> None:
    board.add(
        spec("gpu", priority=99, caps=["compute:gpu"]),
        spec("mid", priority=60),
        spec("low", priority=10),
    )
    mine = ["code:python"]
    chosen = pick_next(board.tasks.values(), lambda task: qualifies(task, mine))
    assert chosen is not None
    assert chosen.id == "mid"
    assert (
        pick_next(board.tasks.values(), lambda task: qualifies(task, ["compute:gpu"])).id == "gpu"
    )  # type: ignore[union-attr]
    assert pick_next([], lambda task: True) is None


def test_milestones_are_coarse_and_only_move_forward(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    with pytest.raises(InvalidTask, match="percent"):
        progress(board["a"], ALICE, 33, "", T0)
    board.apply(progress(board["a"], ALICE, 75, "almost", T0))
    with pytest.raises(InvalidTask, match="back"):
        progress(board["a"], ALICE, 25, "", T0)


def test_the_same_milestone_again_replaces_it(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    for n in range(100):  # progress renews the lease: agents repeat it
        board.apply(progress(board["a"], ALICE, 50, f"still at it {n}", T0 + n))
    board.apply(progress(board["a"], ALICE, 75, "almost", T0 + 100))
    assert [(m.percent, m.note) for m in board["a"].milestones] == [
        (50, "still at it 99"),
        (75, "almost"),
    ]


def test_a_task_given_up_starts_again_at_zero_percent(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(progress(board["a"], ALICE, 75, "almost", T0))
    board.apply(give_up(board["a"], ALICE, T0 + 1))
    assert board["a"].milestones == ()
    board.apply(claim(board["a"], BOB, T0 + 2))
    board.apply(progress(board["a"], BOB, 25, "mine now", T0 + 3))  # refused before
    assert board["a"].progress == 25


def test_a_blocker_offers_a_filler_task_the_agent_qualifies_for(board: Board) -> None:
    board.add(
        spec("a"),
        spec("fill-gpu", filler=True, priority=90, caps=["compute:gpu"]),
        spec("fill-docs", filler=True, priority=40, caps=["write:docs"]),
        spec("not-filler", priority=99),
    )
    board.apply(claim(board["a"], ALICE, T0))
    blocker = Blocker(
        type="waiting_on_api_key", description="needs a key", needed_capabilities=("ops:secrets",)
    )
    outcome = board.apply(
        block(board["a"], ALICE, blocker, T0 + 1, board.tasks.values(), ["write:docs"])
    )
    assert board["a"].state is TaskState.BLOCKED
    assert board["a"].blocker is not None
    assert board["a"].blocker.since == T0 + 1
    offers = [event for event in outcome.events if event.kind == "filler.offered"]
    assert [(event.task_id, event.payload["offered_to"]) for event in offers] == [
        ("fill-docs", ALICE)
    ]
    with pytest.raises(IllegalTransition):
        complete(board["a"], ALICE, {}, T0 + 2)  # unblock first
    board.apply(unblock(board["a"], ALICE, T0 + 3))
    assert (board["a"].state, board["a"].blocker) == (TaskState.IN_PROGRESS, None)


def test_long_blockers_escalate_once(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0, BoardConfig(lease_seconds=3600)))
    board.apply(block(board["a"], ALICE, Blocker(type="human", description="needs review"), T0))
    assert escalate_blocked(board.tasks.values(), T0 + 1800).tasks == ()
    outcome = board.apply(escalate_blocked(board.tasks.values(), T0 + 1801))
    assert [event.kind for event in outcome.events] == ["task.escalated"]
    assert escalate_blocked(board.tasks.values(), T0 + 5000).tasks == ()


def test_health_thresholds_are_configurable() -> None:
    assert health(T0, T0 + 29.9) is Health.GREEN
    assert health(T0, T0 + 30) is Health.YELLOW
    assert health(T0, T0 + 299) is Health.YELLOW
    assert health(T0, T0 + 300) is Health.RED
    assert health(None, T0) is Health.RED
    assert health(T0, T0 + 40, BoardConfig(healthy_within=60)) is Health.GREEN


def test_help_goes_to_qualified_agents_only() -> None:
    agents = {
        "if://agent/a": ["code:python", "test:pytest"],
        "if://agent/b": ["code:python"],
        "if://agent/c": ["code:python", "test:pytest", "ops:k8s"],
        "if://agent/d": ["code:python", "test:pytest"],
        "if://agent/e": ["code:python", "test:pytest"],
    }
    helpers = select_helpers(
        agents, ["code:python", "test:pytest"], exclude=["if://agent/a"], max_helpers=2
    )
    assert helpers == ["if://agent/c", "if://agent/d"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Task(id="a", title=" "), "title"),
        (Task(id="a", title="t", priority=101), "priority"),
        (Task(id="a", title="t", dependencies=("b", "b")), "twice"),
    ],
)
def test_invalid_definitions_are_refused(board: Board, bad: Task, message: str) -> None:
    board.add(spec("b"))
    with pytest.raises(InvalidTask, match=message):
        board.add(bad)


def test_final_tasks_cannot_be_cancelled(board: Board) -> None:
    board.add(spec("a"))
    board.apply(claim(board["a"], ALICE, T0))
    board.apply(complete(board["a"], ALICE, {}, T0))
    with pytest.raises(IllegalTransition):
        cancel(board["a"], None, "too late", T0)


def test_a_creation_names_its_creator_as_the_actor_and_takes_the_board_s_max_attempts() -> None:
    """The witness records who created a task (the event's actor), and a task that does
    not set its own number of attempts gets the board's."""
    config = BoardConfig(max_attempts=7)
    outcome = create(
        [Task(id="a", title="A", creator=ALICE, max_attempts=0), Task(id="b", title="B")],
        {},
        T0,
        config,
    )
    assert [(event.kind, event.actor) for event in outcome.events] == [
        ("task.created", ALICE),
        ("task.created", None),
    ]
    assert [task.max_attempts for task in outcome.tasks] == [7, 3]  # b said 3 (the default)
