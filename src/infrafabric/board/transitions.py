"""The one table of legal moves of a task. Everything else asks it.

========================  ===========  =============================================
event                     from         to
========================  ===========  =============================================
release (deps completed)  waiting      available
claim                     available    claimed
progress                  claimed,     in_progress
                          in_progress
heartbeat                 owned        (same state: renews the lease)
block                     claimed,     blocked
                          in_progress
unblock                   blocked      in_progress
complete                  claimed,     completed
                          in_progress
fail (will retry)         owned        available
fail (for good)           owned        failed
give_up (returns it)      owned        available
expire (lease ran out)    owned        available
exhaust (max attempts)    owned        dead
cancel                    not final    cancelled
========================  ===========  =============================================

"owned" is claimed, in_progress or blocked. A blocked task must be unblocked before it
completes: its blocker is on record until someone removes it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from infrafabric.board.model import TaskState
from infrafabric.errors import CallerError

__all__ = ["TRANSITIONS", "IllegalTransition", "TaskEvent", "next_state"]


class TaskEvent(StrEnum):
    RELEASE = "release"
    CLAIM = "claim"
    PROGRESS = "progress"
    HEARTBEAT = "heartbeat"
    BLOCK = "block"
    UNBLOCK = "unblock"
    COMPLETE = "complete"
    FAIL_RETRY = "fail"
    FAIL_FINAL = "fail_final"
    GIVE_UP = "give_up"
    EXPIRE = "expire"
    EXHAUST = "exhaust"
    CANCEL = "cancel"


S, E = TaskState, TaskEvent
_OWNED = (S.CLAIMED, S.IN_PROGRESS, S.BLOCKED)
_WORKING = (S.CLAIMED, S.IN_PROGRESS)
_NOT_FINAL = (S.WAITING, S.AVAILABLE, *_OWNED)

TRANSITIONS: Final[dict[tuple[TaskState, TaskEvent], TaskState]] = {
    (S.WAITING, E.RELEASE): S.AVAILABLE,
    (S.AVAILABLE, E.CLAIM): S.CLAIMED,
    **{(state, E.PROGRESS): S.IN_PROGRESS for state in _WORKING},
    **{(state, E.HEARTBEAT): state for state in _OWNED},
    **{(state, E.BLOCK): S.BLOCKED for state in _WORKING},
    (S.BLOCKED, E.UNBLOCK): S.IN_PROGRESS,
    **{(state, E.COMPLETE): S.COMPLETED for state in _WORKING},
    **{(state, E.FAIL_RETRY): S.AVAILABLE for state in _OWNED},
    **{(state, E.FAIL_FINAL): S.FAILED for state in _OWNED},
    **{(state, E.GIVE_UP): S.AVAILABLE for state in _OWNED},
    **{(state, E.EXPIRE): S.AVAILABLE for state in _OWNED},
    **{(state, E.EXHAUST): S.DEAD for state in _OWNED},
    **{(state, E.CANCEL): S.CANCELLED for state in _NOT_FINAL},
}


class IllegalTransition(CallerError):
    """``event`` is not allowed for task ``task_id`` in ``state``."""

    def __init__(self, task_id: str, state: TaskState, event: TaskEvent) -> None:
        super().__init__(f"task {task_id} is {state}: cannot {event}")
        self.task_id = task_id
        self.state = state
        self.event = event


def next_state(task_id: str, state: TaskState, event: TaskEvent) -> TaskState:
    """The state after ``event``, or :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(task_id, state, event) from None
