"""A model-based test: random operations by three agents on a board with dependencies,
under a manual clock; after every step the board's invariants hold."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from infrafabric.board.model import Blocker, TaskState
from infrafabric.board.rules import (
    BoardConfig,
    InvalidTask,
    NotOwner,
    Outcome,
    block,
    cancel,
    claim,
    complete,
    expire,
    fail,
    give_up,
    heartbeat,
    progress,
    unblock,
)
from infrafabric.board.transitions import IllegalTransition
from tests.board.test_rules import T0, Board, spec

AGENTS = ("if://agent/a", "if://agent/b", "if://agent/c")
# "owner" stands for whoever owns the task now: most actions worth testing are the owner's.
WHO = st.sampled_from(("owner", "owner", *AGENTS))
IDS = tuple(f"t{i}" for i in range(8))
CONFIG = BoardConfig(lease_seconds=60, max_attempts=3)
REFUSED = (NotOwner, IllegalTransition, InvalidTask)


class BoardMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.board = Board()
        self.now = T0
        self.finished: dict[str, tuple[TaskState, int]] = {}
        self.versions: dict[str, int] = {}
        # t0..t7: t2 needs t0 and t1, t5 needs t2, the rest stand alone
        deps = {"t2": ("t0", "t1"), "t5": ("t2",)}
        self.board.add(*(spec(task_id, *deps.get(task_id, ())) for task_id in IDS), now=self.now)

    def act(self, operation: Callable[[], Outcome]) -> Outcome | None:
        try:
            outcome = operation()
        except REFUSED:
            return None  # refused before any change: nothing to apply
        return self.board.apply(outcome)

    @rule(seconds=st.floats(0, 90))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    def resolve(self, task_id: str, who: str) -> str:
        return (self.board[task_id].owner or AGENTS[0]) if who == "owner" else who

    @rule(task_id=st.sampled_from(IDS), agent=st.sampled_from(AGENTS))
    def claim(self, task_id: str, agent: str) -> None:
        before = self.board[task_id]
        if self.act(lambda: claim(before, agent, self.now, CONFIG)) is not None:
            assert before.state is TaskState.AVAILABLE  # never taken from another agent

    @rule(task_id=st.sampled_from(IDS), who=WHO)
    def heartbeat(self, task_id: str, who: str) -> None:
        agent = self.resolve(task_id, who)
        self.act(lambda: heartbeat(self.board[task_id], agent, self.now, CONFIG))

    @rule(task_id=st.sampled_from(IDS), who=WHO, percent=st.sampled_from([0, 25, 50, 75, 100]))
    def progress(self, task_id: str, who: str, percent: int) -> None:
        agent = self.resolve(task_id, who)
        self.act(lambda: progress(self.board[task_id], agent, percent, "", self.now, CONFIG))

    @rule(task_id=st.sampled_from(IDS), who=WHO)
    def block_and_unblock(self, task_id: str, who: str) -> None:
        agent = self.resolve(task_id, who)
        self.act(
            lambda: block(self.board[task_id], agent, Blocker(type="x", description="y"), self.now)
        )
        self.act(lambda: unblock(self.board[task_id], agent, self.now, CONFIG))

    @rule(task_id=st.sampled_from(IDS), who=WHO)
    def complete(self, task_id: str, who: str) -> None:
        agent = self.resolve(task_id, who)
        board, before = self.board, self.board[task_id]
        dependents = board.dependents(task_id)
        done = self.act(lambda: complete(before, agent, {}, self.now, dependents, board.state_of))
        if done is not None:  # only the owner, and only while its lease runs
            assert before.owner == agent
            assert before.lease_expires_at is not None
            assert before.lease_expires_at >= self.now

    @rule(task_id=st.sampled_from(IDS), who=WHO, retry=st.booleans())
    def fail(self, task_id: str, who: str, retry: bool) -> None:
        agent = self.resolve(task_id, who)
        board = self.board
        self.act(
            lambda: fail(
                board[task_id],
                agent,
                "x",
                self.now,
                retry=retry,
                dependents=board.dependents(task_id),
            )
        )

    @rule(task_id=st.sampled_from(IDS), who=WHO)
    def give_up(self, task_id: str, who: str) -> None:
        agent = self.resolve(task_id, who)
        self.act(lambda: give_up(self.board[task_id], agent, self.now))

    @rule(task_id=st.sampled_from(IDS))
    def sweep(self, task_id: str) -> None:
        self.act(lambda: expire(self.board[task_id], self.now, self.board.dependents(task_id)))

    @rule(task_id=st.sampled_from(IDS))
    def cancel(self, task_id: str) -> None:
        self.act(
            lambda: cancel(
                self.board[task_id], None, "operator", self.now, self.board.dependents(task_id)
            )
        )

    @invariant()
    def ownership_matches_state(self) -> None:
        for task in self.board.tasks.values():
            assert task.state.owned == (task.owner is not None)
            assert task.state.owned == (task.lease_expires_at is not None)

    @invariant()
    def finished_tasks_never_change(self) -> None:
        for task in self.board.tasks.values():
            if task.id in self.finished:
                assert (task.state, task.version) == self.finished[task.id]
            elif task.state.final:
                self.finished[task.id] = (task.state, task.version)

    @invariant()
    def attempts_are_bounded(self) -> None:
        for task in self.board.tasks.values():
            assert task.attempts <= task.max_attempts
            if task.state is TaskState.DEAD:
                assert task.attempts == task.max_attempts

    @invariant()
    def waiting_means_a_dependency_is_unfinished(self) -> None:
        for task in self.board.tasks.values():
            done = all(self.board[dep].state is TaskState.COMPLETED for dep in task.dependencies)
            if task.state is TaskState.WAITING:
                assert not done
            if task.state is TaskState.AVAILABLE:
                assert done

    @invariant()
    def versions_only_rise(self) -> None:
        for task in self.board.tasks.values():
            assert task.version >= self.versions.get(task.id, 0)
            self.versions[task.id] = task.version


TestBoardModel = BoardMachine.TestCase
TestBoardModel.settings = settings(max_examples=300, stateful_step_count=60)
