"""What an LLM should do about a refusal: the fabric's reason code and one sentence.

Pure: a reason code, the tool that met it and its task in, advice out. The advice is
written for a model reading a tool error, so it names the tool to call next.
"""

from __future__ import annotations

from typing import Final

__all__ = ["advice"]

_ADVICE: Final[dict[str, str]] = {
    "ILLEGAL_TRANSITION": (
        "{task} is not in a state that allows this (another agent may hold it, or it is "
        "finished); call get_task to see its state, or claim_next for other work"
    ),
    "NOT_OWNER": (
        "{task} is held by another agent, not you; call claim_next to get work of your own"
    ),
    "LEASE_LOST": (
        "your lease on {task} ran out and the task went back to the board; call claim_task "
        "to take it again, and call heartbeat more often than the lease (120 s by default)"
    ),
    "NOT_FOUND": "{task} does not exist; call list_tasks to see the task ids",
    "INVALID_TASK": "the task is not valid as given; fix the arguments named above and retry",
    "INVALID_OPERATION": "an argument is out of range or malformed; fix it and retry",
    "INVALID_ARGUMENT": "an argument is not valid as given (see above); fix it and retry",
    "NOT_QUALIFIED": (
        "you lack a capability {task} requires; call claim_next, which offers only tasks "
        "you qualify for"
    ),
    "BREAKER_OPEN": (
        "your circuit breaker is open after repeated failures; stop taking work and tell "
        "your operator (who can reset it)"
    ),
    "LOW_REPUTATION": "your recent record is too poor for {task}; call claim_next for other work",
    "BUDGET_EXHAUSTED": "the budget is spent; stop taking work and tell your operator",
    "TASK_OVER_BUDGET": (
        "{task} would cost more than its budget allows you; call claim_next for other work"
    ),
    "NOT_CREATOR": "only the agent that created {task} (or an operator) may do this",
    "NOT_ENROLLED": "your identity is not enrolled in this fabric; ask the operator to enroll it",
    "BUSY": "the fabric is busy; wait a second and call the same tool again",
    "STORE_UNAVAILABLE": (
        "the fabric's store is unavailable for a moment; wait a second and retry the same call"
    ),
    "TIMEOUT": (
        "no reply came in time and the change may have happened; call get_task before retrying"
    ),
    "DISCONNECTED": "the connection to the fabric dropped; retry the same call",
    "UNREACHABLE": "the fabric server cannot be reached; retry later or tell your operator",
    "KEY_EXPIRED": (
        "the key this MCP connection signs with has expired; ask for a new token (ifab mcp token)"
    ),
    "KEY_REVOKED": "the key this MCP connection signs with was revoked; ask for a new token",
    "REPLAY": "this exact message was already received; do not resend it, call get_task instead",
    "UNKNOWN_RECEIVER": (
        "no agent of that name is enrolled; call board_status for the agents and send again"
    ),
    "RESERVED_TOPIC": "only the fabric publishes on that topic; pick a topic of your own",
}


def advice(code: str, task: str | None = None) -> str:
    """The sentence for ``code`` (about ``task`` when the tool had one), or a generic one."""
    text = _ADVICE.get(code, "read the detail above, correct the call and retry once")
    return text.format(task=f"task {task}" if task else "the task")
