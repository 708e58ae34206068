"""What agents ask of the board: the ``content`` of a ``request`` to ``if://service/board``.

Each operation is a small struct tagged by ``op``; the SDK builds them, the service
decodes them with the same definitions, so both sides agree on every field and limit.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeAlias

from msgspec import Meta, Struct

from infrafabric.protocol.patterns import AgentField, KidField, PublicKeyField

__all__ = [
    "BOARD",
    "FABRIC_COMPONENTS",
    "GOVERNOR",
    "INBOX",
    "KEYS",
    "MAX_DELEGATION_SECONDS",
    "MAX_TASK_ID",
    "MAX_TASK_PAGE",
    "MESH",
    "MESH_STATUS_TOPIC",
    "Ack",
    "Block",
    "Cancel",
    "Claim",
    "ClaimNext",
    "Complete",
    "Create",
    "Delegate",
    "Fail",
    "GiveUp",
    "GovernorOperation",
    "Heartbeat",
    "Help",
    "InboxOperation",
    "KeysOperation",
    "LinkReport",
    "MeshEventReport",
    "MeshOperation",
    "MeshReport",
    "Operation",
    "Progress",
    "Recall",
    "ResetBreaker",
    "TaskSpec",
    "Unblock",
    "Usage",
    "fabric_topic",
]

#: The address agents send board operations to.
BOARD: Final = "if://service/board"

#: The longest task id.
MAX_TASK_ID: Final = 128
#: The most tasks one page of ``GET /v1/tasks`` holds (about 2 MB of JSON).
MAX_TASK_PAGE: Final = 5000

TaskIdText = Annotated[str, Meta(pattern=rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_TASK_ID - 1}}}\Z")]
Capability = Annotated[str, Meta(pattern=r"^[a-z0-9_-]{1,32}:[a-z0-9_.*-]{1,64}\Z")]
Capabilities = Annotated[list[Capability], Meta(max_length=64)]
Text = Annotated[str, Meta(max_length=10_000)]


class TaskSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task to create; the board fills in state, times and version."""

    id: TaskIdText | None = None  # the service makes one up when absent
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    description: Text = ""
    required_capabilities: Capabilities = []
    priority: Annotated[int, Meta(ge=0, le=100)] = 50
    dependencies: Annotated[list[TaskIdText], Meta(max_length=100)] = []
    filler: bool = False
    # left out: the board's own setting (BoardConfig.max_attempts, `ifab serve --max-attempts`)
    max_attempts: Annotated[int, Meta(ge=1, le=20)] | None = None


class Usage(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a piece of work cost, as the agent reports it with progress, completion or
    failure: tokens in and out, the model, and (when the agent knows it) US dollars. The
    witness records it as the decision's ``cost``."""

    tokens_in: Annotated[int, Meta(ge=0, le=10**12)] = 0
    tokens_out: Annotated[int, Meta(ge=0, le=10**12)] = 0
    model: Annotated[str, Meta(max_length=128)] = ""
    usd: Annotated[float, Meta(ge=0, le=1e9)] = 0.0
    seconds: Annotated[float, Meta(ge=0, le=1e9)] = 0.0  # for agents priced by the hour


class _Op(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    pass


class Create(_Op, frozen=True, tag="create"):
    tasks: Annotated[list[TaskSpec], Meta(min_length=1, max_length=1000)]


class Claim(_Op, frozen=True, tag="claim"):
    task_id: TaskIdText


class ClaimNext(_Op, frozen=True, tag="claim_next"):
    pass


class Heartbeat(_Op, frozen=True, tag="heartbeat"):
    task_id: TaskIdText


class Progress(_Op, frozen=True, tag="progress"):
    task_id: TaskIdText
    percent: Literal[0, 25, 50, 75, 100]  # board.model.MILESTONES
    note: Annotated[str, Meta(max_length=2000)] = ""
    usage: Usage | None = None


class Block(_Op, frozen=True, tag="block"):
    task_id: TaskIdText
    type: Annotated[str, Meta(min_length=1, max_length=64)]
    description: Annotated[str, Meta(min_length=1, max_length=2000)]
    needed_capabilities: Capabilities = []
    urgency: Literal["low", "medium", "high", "critical"] = "medium"


class Unblock(_Op, frozen=True, tag="unblock"):
    task_id: TaskIdText


class Complete(_Op, frozen=True, tag="complete"):
    task_id: TaskIdText
    result: dict[str, Any] = {}
    usage: Usage | None = None


class Fail(_Op, frozen=True, tag="fail"):
    task_id: TaskIdText
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]
    retry: bool = True
    usage: Usage | None = None


class GiveUp(_Op, frozen=True, tag="give_up"):
    task_id: TaskIdText


class Help(_Op, frozen=True, tag="help"):
    task_id: TaskIdText
    needed: Capabilities


class Cancel(_Op, frozen=True, tag="cancel"):
    task_id: TaskIdText
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]


Operation: TypeAlias = (
    Create
    | Claim
    | ClaimNext
    | Heartbeat
    | Progress
    | Block
    | Unblock
    | Complete
    | Fail
    | GiveUp
    | Help
    | Cancel
)


#: The address operators send governor operations to.
GOVERNOR: Final = "if://service/governor"


class ResetBreaker(_Op, frozen=True, tag="reset"):
    """Close an agent's circuit breaker: only a message signed with an operator key."""

    agent: AgentField


GovernorOperation: TypeAlias = ResetBreaker


#: The address agents send their key operations to.
KEYS: Final = "if://service/keys"
#: The longest an agent may lend a key for: a forgotten token dies within a month.
MAX_DELEGATION_SECONDS: Final = 30 * 86_400


class Delegate(_Op, frozen=True, tag="delegate"):
    """Lend the sender's authority to ``public_key`` for ``seconds`` (see
    :attr:`~infrafabric.protocol.keyring.KeyRole.DELEGATE`); only the agent's own key may."""

    public_key: PublicKeyField
    seconds: Annotated[int, Meta(ge=60, le=MAX_DELEGATION_SECONDS)]


class Recall(_Op, frozen=True, tag="recall"):
    """Revoke one of the sender's delegated keys before its time is up."""

    kid: KidField


KeysOperation: TypeAlias = Delegate | Recall


#: The address agents acknowledge their direct messages at.
INBOX: Final = "if://service/inbox"


class Ack(_Op, frozen=True, tag="ack"):
    """Take the direct message at ``position`` out of the sender's own inbox for good
    (``acknowledged``: whether it was there)."""

    # (the integers of signed content are exact as doubles, RFC 8785: under 2**53, far
    # under SQLite's 2**63)
    position: Annotated[int, Meta(ge=0, le=2**53 - 1)]


InboxOperation: TypeAlias = Ack


#: The address mesh peers report to: what happened to their links (witnessed) and how
#: the links are (shown on the dashboard and in /metrics).
MESH: Final = "if://service/mesh"
#: Where the fabric publishes each peer's latest link report, for every server to hear.
MESH_STATUS_TOPIC: Final = "if://topic/mesh-status"
#: The components whose events the fabric publishes on ``if://topic/<component>/...``
#: (:attr:`~infrafabric.board.model.BoardEvent.topic`): no agent may publish there.
FABRIC_COMPONENTS: Final = frozenset({"board", "governor", "keys", "mesh", "verify", "witness"})


def fabric_topic(address: str) -> bool:
    """Whether only the fabric publishes on ``address``: the topics of its own events
    (``if://topic/board`` and below, and the like) and :data:`MESH_STATUS_TOPIC`, where it
    publishes the mesh reports it checked. ``if://topic/mesh-presence`` is the agents'."""
    if address == MESH_STATUS_TOPIC:
        return True
    if not address.startswith("if://topic/"):
        return False
    return address[len("if://topic/") :].split("/", 1)[0] in FABRIC_COMPONENTS


MeshEventKind = Literal[
    "mesh.link_up",
    "mesh.link_lost",
    "mesh.reconnect",
    "mesh.relay_fallback",
    "mesh.link_given_up",
    "mesh.quality_degraded",
    "mesh.quality_restored",
]
Band = Literal["excellent", "good", "fair", "poor"]
Milliseconds = Annotated[float, Meta(ge=0, le=3_600_000)]


class MeshEventReport(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: MeshEventKind
    peer: AgentField
    at: Annotated[float, Meta(ge=0)]
    attempt: Annotated[int, Meta(ge=0, le=1000)] | None = None
    band: Band | None = None
    rtt_ms: Milliseconds | None = None
    jitter_ms: Milliseconds | None = None
    loss_percent: Annotated[float, Meta(ge=0, le=100)] | None = None


class LinkReport(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    peer: AgentField
    relay: bool = False
    band: Band | None = None  # None: not judged yet
    rtt_ms: Milliseconds | None = None
    jitter_ms: Milliseconds | None = None
    loss_percent: Annotated[float, Meta(ge=0, le=100)] | None = None


class MeshReport(_Op, frozen=True, tag="report"):
    """A peer's links now, and what happened to them since its last report."""

    members: Annotated[int, Meta(ge=1, le=100_000)]
    links: Annotated[list[LinkReport], Meta(max_length=1024)] = []
    retrying: Annotated[list[AgentField], Meta(max_length=1024)] = []
    #: the next hop towards each other member (absent: only through the server)
    routes: Annotated[dict[AgentField, AgentField], Meta(max_length=4096)] = {}
    events: Annotated[list[MeshEventReport], Meta(max_length=256)] = []


MeshOperation: TypeAlias = MeshReport
