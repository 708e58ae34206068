"""The values of the task board: tasks and what hangs off them, and board events."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final

from msgspec import Meta, Struct

from infrafabric.types import AgentId, Timestamp

__all__ = [
    "MILESTONES",
    "Blocker",
    "BoardEvent",
    "Milestone",
    "Task",
    "TaskId",
    "TaskState",
    "Urgency",
]

TaskId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")]
#: Progress is reported at these percentages only: coarse steps agents can mean.
MILESTONES: Final = (0, 25, 50, 75, 100)


class TaskState(StrEnum):
    WAITING = "waiting"  # dependencies not yet completed
    AVAILABLE = "available"
    CLAIMED = "claimed"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"  # given up by its owner, for good
    CANCELLED = "cancelled"
    DEAD = "dead"  # too many failed or expired attempts

    @property
    def owned(self) -> bool:
        """An agent holds the task under a lease."""
        return self in _OWNED

    @property
    def final(self) -> bool:
        return self in _FINAL


_OWNED: Final = frozenset({TaskState.CLAIMED, TaskState.IN_PROGRESS, TaskState.BLOCKED})
_FINAL: Final = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.DEAD}
)


class Urgency(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Milestone(Struct, frozen=True, forbid_unknown_fields=True):
    percent: int
    note: str
    at: Timestamp


class Blocker(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why an agent cannot go on, and what would unblock it."""

    type: str
    description: str
    needed_capabilities: tuple[str, ...] = ()
    urgency: Urgency = Urgency.MEDIUM
    since: Timestamp = 0.0
    escalated_at: Timestamp | None = None


class Task(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One unit of work. ``version`` rises with every change; stores compare-and-set on it."""

    id: str
    title: str
    description: str = ""
    required_capabilities: tuple[str, ...] = ()
    priority: int = 50  # 0..100, higher first
    dependencies: tuple[str, ...] = ()
    filler: bool = False  # small work offered to a blocked agent
    state: TaskState = TaskState.AVAILABLE
    owner: AgentId | None = None
    lease_expires_at: Timestamp | None = None
    attempts: int = 0  # claims that ended without completion
    max_attempts: int = 3
    milestones: tuple[Milestone, ...] = ()
    blocker: Blocker | None = None
    failed_dependencies: tuple[str, ...] = ()  # visible on a waiting task
    result: dict[str, Any] | None = None
    failure: str | None = None
    last_owner: AgentId | None = None
    creator: AgentId | None = None  # who added it (may cancel it, with the operators)
    created_at: Timestamp = 0.0
    updated_at: Timestamp = 0.0
    version: int = 1

    @property
    def progress(self) -> int:
        return self.milestones[-1].percent if self.milestones else 0


class BoardEvent(Struct, frozen=True, kw_only=True):
    """Something the fabric decided, published on ``if://topic/<component>/<kind>``.

    Most come from the board (``component`` "board", a task's ``task_id`` and ``state``);
    the fabric records its other decisions in the same event log, so the witness sees
    one ordered history: enrolled keys (``keys``), flagged messages in audit mode
    (``verify``) and, later, the governor's. ``trace_id`` is the trace of the message
    that caused the decision, when it named one.
    """

    kind: str  # e.g. "task.claimed", "task.expired", "filler.offered"
    task_id: str = ""
    actor: AgentId | None
    at: Timestamp
    state: TaskState | None = None
    payload: dict[str, Any] = {}
    component: str = "board"
    trace_id: str | None = None

    @property
    def topic(self) -> str:
        return f"if://topic/{self.component}/{self.kind.replace('.', '/')}"
