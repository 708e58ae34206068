"""The embedded mode: the SDK against a fabric in this process, no server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infrafabric import Outbox, encode_json, ops
from infrafabric.board.rules import BoardConfig
from infrafabric.client import Client, RemoteError
from infrafabric.errors import MessageError, StoreError
from infrafabric.fabric import EMBEDDED_CHECKPOINT_SECONDS, Fabric
from infrafabric.governor.core import Manifest
from infrafabric.protocol.identity import SigningIdentity
from infrafabric.protocol.keyring import Keyring, KeyRole, new_key_record
from infrafabric.protocol.message import agent_id
from infrafabric.protocol.verify import DEFAULT_MAX_BYTES, Mode, Rule, RuleAuthorizer
from infrafabric.server.app import enroll_keys
from infrafabric.server.runner import open_server
from infrafabric.service import InProcess, InProcessSession, ServiceError
from infrafabric.storage.base import AgentRecord
from infrafabric.storage.sqlite import CHECKPOINT_SECONDS


def _watch_paths(fabric: Fabric) -> list[str]:
    """The paths of the requests the fabric's application is asked from now on (clients
    connected later reach it through the watcher)."""
    paths: list[str] = []
    app = fabric.app

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope.get("path", ""))
        await app(scope, receive, send)

    fabric.app = watched  # type: ignore[assignment]
    return paths


async def _claim_a(agent: Client, other: Client) -> None:
    """``agent`` claims task ``a``: the reply as JSON values, as over HTTP; ``other`` may
    not complete it (the refusal's code and status as over HTTP)."""
    claimed = await agent.claim("a")
    assert (claimed["id"], claimed["owner"]) == ("a", agent.agent)
    assert isinstance(claimed["milestones"], list)
    with pytest.raises(RemoteError) as refused:
        await other.complete("a", {})
    assert (refused.value.code, refused.value.status) == ("NOT_OWNER", 403)


@contextlib.contextmanager
def _crew(tmp_path: Path, size: int) -> Iterator[tuple[Fabric, list[SigningIdentity]]]:
    """An embedded fabric whose leases outlast the test, and ``size`` agents enrolled."""
    with Fabric.open(
        tmp_path / "board", synchronous="NORMAL", config=BoardConfig(lease_seconds=3600)
    ) as fabric:
        yield fabric, [fabric.enroll(f"agent-{i:02d}") for i in range(size)]


def test_an_embedded_fabric_speaks_the_same_api(tmp_path: Path) -> None:
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice = fabric.enroll("alice", ["code:python"])
        bob = fabric.enroll("bob")

        async def scenario() -> None:
            async with fabric.connect(alice) as agent, fabric.connect(bob) as other:
                await agent.create_tasks(
                    [{"id": "a", "title": "A"}, {"id": "b", "title": "B", "dependencies": ["a"]}]
                )
                async with other.stream(["if://topic/board/task/*"]) as frames:
                    task = await agent.claim_next()
                    assert task is not None
                    assert task["id"] == "a"
                    await agent.complete("a", {"ok": 1})
                    kinds = []
                    async for frame in frames:
                        kinds.append(frame.data["event"]["kind"])
                        if "task.released" in kinds:
                            break
                assert kinds == ["task.claimed", "task.completed", "task.released"]
                assert (await other.task("b"))["state"] == "available"
                await agent.send(bob.agent, "inform", {"hi": 1})
                [(position, message)] = await other.inbox()
                assert message.content == {"hi": 1}
                assert await other.ack(position)
                with pytest.raises(RemoteError) as refused:
                    await other.complete("b", {})
                assert refused.value.code == "NOT_OWNER"

        asyncio.run(scenario())


def test_many_embedded_agents_claim_every_task_once(tmp_path: Path) -> None:
    with _crew(tmp_path, 50) as (fabric, agents):
        completed: Counter[str] = Counter()

        async def worker(identity: object) -> None:
            async with fabric.connect(identity) as agent:  # type: ignore[arg-type]
                while (task := await agent.claim_next()) is not None:
                    await agent.complete(task["id"])
                    completed[task["id"]] += 1

        async def scenario() -> None:
            async with fabric.connect(agents[0]) as planner:
                await planner.create_tasks([{"id": f"t{i:03d}", "title": "x"} for i in range(500)])
            await asyncio.gather(*(worker(identity) for identity in agents))

        asyncio.run(scenario())
        assert len(completed) == 500
        assert set(completed.values()) == {1}


def test_request_reply_and_its_timeout(tmp_path: Path) -> None:
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice, bob, silent = fabric.enroll("alice"), fabric.enroll("bob"), fabric.enroll("silent")

        async def responder(ready: asyncio.Event) -> None:
            async with fabric.connect(bob) as agent, agent.stream() as frames:
                ready.set()
                async for frame in frames:
                    question = frame.message
                    assert question is not None
                    await agent.reply(question, {"answer": question.content["x"] * 2})
                    await agent.ack(frame.position)  # type: ignore[arg-type]
                    return

        async def scenario() -> None:
            ready = asyncio.Event()
            serving = asyncio.create_task(responder(ready))
            await ready.wait()
            async with fabric.connect(alice) as agent:
                answer = await agent.request(bob.agent, {"x": 21}, timeout=10)
                assert answer.content == {"answer": 42}
                assert answer.sender == bob.agent
                # (asyncio's own TimeoutError says nothing: this one names whom and how long)
                with pytest.raises(
                    TimeoutError, match=r"no reply from if://agent/silent within 0\.5 s"
                ):
                    await agent.request(silent.agent, {"x": 1}, timeout=0.5)
            await serving

        asyncio.run(scenario())


def test_an_agent_enrolled_again_is_known_by_its_new_record_at_once(tmp_path: Path) -> None:
    """The service keeps agent records in memory (every board message needs its sender's);
    enrolling an agent again must not leave the old record answering. (Without the
    governor, which keeps capabilities of its own, claim_next matches on the record.)"""
    from infrafabric.server.runner import open_server

    state = open_server(tmp_path / "board", synchronous="NORMAL", governor=False)
    with Fabric(state, sweep_every=1.0) as fabric:
        alice = fabric.enroll("alice")

        async def claim_next() -> dict[str, object] | None:
            async with fabric.connect(alice) as agent:
                return await agent.claim_next()

        async def create() -> None:
            async with fabric.connect(alice) as agent:
                await agent.create_tasks(
                    [{"id": "render", "title": "x", "required_capabilities": ["render:gpu"]}]
                )

        async def claim() -> str:
            async with fabric.connect(alice) as agent:
                with pytest.raises(RemoteError) as refused:
                    await agent.claim("render")
                return f"{refused.value.code} {refused.value.status} {refused.value.detail}"

        asyncio.run(create())
        assert asyncio.run(claim_next()) is None  # not capable: that record is kept
        # nor by id: without the governor this claim was let through
        assert (
            asyncio.run(claim()) == "NOT_QUALIFIED 403 if://agent/alice lacks render:gpu for render"
        )
        fabric.enroll(alice, ["render:gpu"])
        task = asyncio.run(claim_next())
        assert task is not None
        assert task["id"] == "render"


def test_an_agent_enrolled_in_an_embedded_fabric_is_known_when_it_is_opened_again(
    tmp_path: Path,
) -> None:
    """The agent's record is in the store, so its key must be in the data directory's
    keyring too: a fabric opened again verifies that agent's messages."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice = fabric.enroll("alice", ["code:python"])

        async def create() -> None:
            async with fabric.connect(alice) as agent:
                await agent.create_task("first", id="t1")

        asyncio.run(create())

    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:

        async def claim() -> dict[str, Any]:
            async with fabric.connect(alice) as agent:
                return await agent.claim("t1")

        assert asyncio.run(claim())["state"] == "claimed"


def test_a_record_read_while_the_agent_is_enrolled_again_is_not_kept(tmp_path: Path) -> None:
    """A record read just before an enrollment commits (another thread's) is the old
    one: it may answer that one message, never the ones after."""
    from infrafabric.storage.base import AgentRecord

    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        service = fabric.state.service
        alice = fabric.enroll("alice")
        store_read = service.store.agent
        renewed = AgentRecord(id=alice.agent, capabilities=("render:gpu",))

        def read_then_enrolled(agent_id: str) -> AgentRecord | None:
            old = store_read(agent_id)  # the read, then the enrollment commits meanwhile
            service.store.agent = store_read  # type: ignore[method-assign]
            service.enroll(renewed)
            return old

        service.store.agent = read_then_enrolled  # type: ignore[method-assign]
        first = service.agent(alice.agent)
        assert first is not None
        assert first.capabilities == ()
        assert service.agent(alice.agent) == renewed


def test_signed_messages_go_to_the_committer_without_http_and_refusals_read_the_same(
    tmp_path: Path,
) -> None:
    """A signed embedded claim (``signed=True``) hands its bytes straight to the
    committer (an HTTP request and answer around them took most of its time); what comes
    back, a reply or a refusal with its code and status, is what ``POST /v1/messages``
    would have said."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice, bob = fabric.enroll("alice"), fabric.enroll("bob")
        paths = _watch_paths(fabric)

        async def scenario() -> None:
            async with (
                fabric.connect(alice, signed=True) as agent,
                fabric.connect(bob, signed=True) as other,
            ):
                [created] = await agent.create_tasks([{"id": "a", "title": "A"}])
                assert created["state"] == "available"
                await _claim_a(agent, other)
                with pytest.raises(RemoteError) as too_large:
                    await agent.send(bob.agent, "inform", {"text": "x" * DEFAULT_MAX_BYTES})
                assert (too_large.value.code, too_large.value.status) == ("TOO_LARGE", 413)
                assert (await other.task("a"))["owner"] == alice.agent  # a read: over ASGI

        asyncio.run(scenario())
        # signed, checked: the agents' sequence numbers were recorded
        assert fabric.state.service.verifier.sequences.snapshot(alice.agent) is not None
    assert "/v1/messages" not in paths
    assert "/v1/tasks/a" in paths


def test_board_operations_in_process_go_unsigned_and_read_as_signed_ones_do(
    tmp_path: Path,
) -> None:
    """By default an embedded client hands its board operations over as data: nothing
    signed, nothing checked by the verifier, no HTTP; replies and refusals read as those
    of signed messages, and decisions name the agent and the trace. A help request still
    goes signed: the invited agent receives the asker's own message."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice, bob = fabric.enroll("alice"), fabric.enroll("bob", ["review:code"])
        paths = _watch_paths(fabric)
        sequences = fabric.state.service.verifier.sequences

        async def scenario() -> None:
            async with fabric.connect(alice) as agent, fabric.connect(bob) as other:
                await agent.create_tasks([{"id": "a", "title": "A"}])
                with Client.trace("trace-7"):
                    await _claim_a(agent, other)
                with pytest.raises(RemoteError) as too_large:
                    await agent.create_task("big", description="x" * DEFAULT_MAX_BYTES)
                assert (too_large.value.code, too_large.value.status) == ("TOO_LARGE", 413)
                assert sequences.snapshot(alice.agent) is None  # no signed message yet
                assert await agent.request_help("a", ["review:code"]) == [bob.agent]
                [(_, invitation)] = await other.inbox()
                assert invitation.sender == alice.agent
                assert invitation.content["op"] == "help"
                assert sequences.snapshot(alice.agent) is not None  # that one was signed

        asyncio.run(scenario())
        claims = [
            s.event
            for s in fabric.state.service.store.events_since(0, 1000)
            if s.event.kind == "task.claimed"
        ]
        assert [(e.actor, e.trace_id) for e in claims] == [(alice.agent, "trace-7")]
    assert "/v1/messages" not in paths


def test_a_recalled_key_stops_its_in_process_client_at_once(tmp_path: Path) -> None:
    """The key of an in-process client is checked at every operation, as a signed
    message's would be: once recalled, the next operation is refused and changes nothing."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice = fabric.enroll("alice")
        lent = SigningIdentity.generate(alice.agent)

        async def scenario() -> None:
            async with fabric.connect(alice) as agent:
                await agent.delegate(lent.public_key, 3600)
                async with fabric.connect(lent) as helper:
                    await helper.create_task("A", id="a")
                    assert (await helper.claim("a"))["owner"] == alice.agent
                    await agent.recall(lent.kid)
                    with pytest.raises(RemoteError) as refused:
                        await helper.complete("a", {})
                    assert (refused.value.code, refused.value.status) == ("KEY_REVOKED", 401)
                assert (await agent.task("a"))["state"] == "claimed"

        asyncio.run(scenario())


def test_an_in_process_operation_is_refused_as_a_signed_one_would_be(tmp_path: Path) -> None:
    """Handed to the committer directly: a session never opened (an ``InProcess`` made
    from names alone) or closed, an unknown key, another agent's key, a help request (it
    must be signed), an operation that is not one, one too large: each refused with its
    code, and nothing written."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice, bob = fabric.enroll("alice"), fabric.enroll("bob")
        service = fabric.state.service
        session = InProcessSession(alice.agent, alice.kid)
        create = {"op": "create", "tasks": [{"id": "a", "title": "A"}]}

        def submit(request: InProcess) -> Any:
            return asyncio.run(fabric.state.committer.submit(request, time.time()))

        with pytest.raises(ServiceError) as refused:
            submit(InProcess(session, create))  # not opened: names prove nothing
        assert (refused.value.code, refused.value.status) == ("UNAUTHENTICATED", 401)
        service.open_in_process(session)
        unknown, others = (
            InProcessSession(alice.agent, "no-such-kid"),
            InProcessSession(alice.agent, bob.kid),
        )
        service.open_in_process(unknown)
        service.open_in_process(others)
        help_ = {"op": "help", "task_id": "a", "needed": []}
        cases = [
            (InProcess(unknown, create), "UNKNOWN_KEY", 401),
            (InProcess(others, create), "UNKNOWN_KEY", 401),
            (InProcess(session, help_), "UNSIGNED", 401),
            (InProcess(session, {"op": "claim"}), "INVALID_OPERATION", 422),
            (InProcess(session, {**create, "x": "y" * DEFAULT_MAX_BYTES}), "TOO_LARGE", 413),
        ]
        for request, code, status in cases:
            with pytest.raises(ServiceError) as refused:
                submit(request)
            assert (refused.value.code, refused.value.status) == (code, status), request
        assert list(service.store.tasks()) == []
        assert [t["id"] for t in submit(InProcess(session, create))["tasks"]] == ["a"]
        service.close_in_process(session)
        with pytest.raises(ServiceError) as refused:
            submit(InProcess(session, {"op": "claim", "task_id": "a"}))
        assert refused.value.code == "UNAUTHENTICATED"
        assert service.store.get("a").state == "available"  # type: ignore[union-attr]


def test_an_in_process_operation_is_plain_json_copied_when_made(tmp_path: Path) -> None:
    """The checks a signed message's content gets, at the call (the same MessageError the
    SDK raises before signing); and what the caller changes afterwards, while the
    operation waits for its batch, changes nothing."""
    session = InProcessSession(agent_id("alice"), "kid")
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"x": deep}
    for content in (
        {"op": "create", "tasks": [{"title": float("nan")}]},
        {"op": "complete", "task_id": "a", "result": {"n": 2**70}},
        {"op": "complete", "task_id": "a", "result": {1: "x"}},
        {"op": {1, 2}},
        {"op": "complete", "task_id": "a", "result": deep},
    ):
        with pytest.raises(MessageError):
            InProcess(session, content)
    with pytest.raises(MessageError):
        InProcess(session, {"op": "claim", "task_id": "a"}, "a trace with spaces")
    with pytest.raises(MessageError):
        InProcess(session, ["op", "claim"])  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.agent = agent_id("bob")  # type: ignore[misc]
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice = fabric.enroll("alice")

        async def scenario() -> None:
            async with fabric.connect(alice) as agent:
                spec = {"id": "a", "title": "as called"}
                creating = asyncio.create_task(agent.create_tasks([spec]))
                await asyncio.sleep(0)  # it runs up to its wait for the batch
                spec["title"] = "changed after the call"
                await creating
                await agent.claim("a")
                result = {"notes": ["as called"]}
                completing = asyncio.create_task(agent.complete("a", result))
                await asyncio.sleep(0)
                result["notes"].append("changed after the call")
                await completing
                with pytest.raises(MessageError):
                    await agent.create_task("b", description=float("inf"))  # type: ignore[arg-type]

        asyncio.run(scenario())
        task = fabric.state.service.store.get("a")
        assert task is not None
        assert (task.title, task.result) == ("as called", {"notes": ["as called"]})
        assert fabric.state.service.store.get("b") is None


def test_blocking_clients_hand_their_operations_over_unsigned_too(tmp_path: Path) -> None:
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice = fabric.enroll("alice")
        with fabric.connect_sync(alice) as agent:
            agent.create_task("A", id="a")
            assert agent.claim("a")["owner"] == alice.agent
        assert fabric.state.service.verifier.sequences.snapshot(alice.agent) is None
        with fabric.connect_sync(alice, signed=True) as agent:
            agent.heartbeat("a")
        assert fabric.state.service.verifier.sequences.snapshot(alice.agent) is not None


@pytest.mark.parametrize("needs", ["audit", "permissive", "rules"])
def test_a_fabric_that_needs_signed_messages_gets_them_in_process_too(
    tmp_path: Path, needs: str
) -> None:
    """In audit mode a message that fails a check is carried out and witnessed as such,
    in permissive mode an unsigned one from a local sender is accepted, and by rules a
    message is authorized: all need the signed message, so an embedded client signs
    every operation there, and the unsigned path refuses."""
    mode = {"audit": Mode.AUDIT, "permissive": Mode.PERMISSIVE}.get(needs, Mode.STRICT)
    state = open_server(tmp_path / "data", synchronous="NORMAL", verify_mode=mode)
    if needs == "rules":
        state.service.verifier.authorizer = RuleAuthorizer([Rule("if://agent/**")])
    with Fabric(state, sweep_every=60.0) as fabric:
        alice = fabric.enroll("alice")
        assert not state.service.takes_in_process

        async def scenario() -> None:
            async with fabric.connect(alice) as agent:
                await agent.create_task("A", id="a")
                await agent.claim("a")

        asyncio.run(scenario())
        assert state.service.verifier.sequences.snapshot(alice.agent) is not None
        session = InProcessSession(alice.agent, alice.kid)
        state.service.open_in_process(session)
        with pytest.raises(ServiceError) as refused:
            asyncio.run(
                state.committer.submit(InProcess(session, {"op": "claim_next"}), time.time())
            )
        assert (refused.value.code, refused.value.status) == ("UNSIGNED", 401)


def test_an_operator_in_process_may_cancel_any_task(tmp_path: Path) -> None:
    """An operator's key carries its authority in process too, and only an operator's."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice, bob = fabric.enroll("alice"), fabric.enroll("bob")
        operator = SigningIdentity.generate(agent_id("ops"))
        now = time.time()
        key = new_key_record(
            operator.agent, operator.public_key, version=1, now=now - 60, role=KeyRole.OPERATOR
        )
        record = AgentRecord(id=operator.agent, enrolled_at=now)
        enroll_keys(fabric.state, record, [key], Manifest(), now)

        async def scenario() -> None:
            async with (
                fabric.connect(alice) as creator,
                fabric.connect(bob) as other,
                fabric.connect(operator) as ops_,
            ):
                await creator.create_task("A", id="a")
                with pytest.raises(RemoteError) as refused:
                    await other.cancel("a", "not mine")
                assert refused.value.code == "NOT_CREATOR"
                assert (await ops_.cancel("a", "stale"))["state"] == "cancelled"

        asyncio.run(scenario())


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_a_server_s_wal_is_copied_by_the_thread_in_small_rounds(
    tmp_path: Path, synchronous: str
) -> None:
    state = open_server(tmp_path / "server", synchronous=synchronous)
    try:
        store = state.service.coordinator.store
        assert getattr(store, "_checkpointer", None) is not None
        assert getattr(store, "checkpoint_seconds", None) == CHECKPOINT_SECONDS == 0.05
    finally:
        state.close()
    given = open_server(tmp_path / "other", synchronous=synchronous, checkpoint_seconds=30.0)
    try:
        assert getattr(given.service.coordinator.store, "checkpoint_seconds", None) == 30.0
    finally:
        given.close()


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_the_wal_of_an_embedded_fabric_is_copied_by_whoever_keeps_it_small(
    tmp_path: Path, synchronous: str
) -> None:
    # FULL: SQLite's own checkpoint in the commit that fills the WAL past 1,000 pages,
    # so a stream of claims rewrites a WAL of a few MB in place (with the background
    # thread, it grew towards its 20,000-page backstop). NORMAL: the background thread,
    # which takes the flush of the unflushed WAL off the commit path.
    with Fabric.open(
        tmp_path / "board", synchronous=synchronous, config=BoardConfig(lease_seconds=3600)
    ) as fabric:
        store = fabric.state.service.coordinator.store
        assert (getattr(store, "_checkpointer", None) is not None) is (synchronous == "NORMAL")
        if synchronous == "NORMAL":
            # less often than a server's: one writer back to back leaves it no quiet time
            assert getattr(store, "checkpoint_seconds", None) == EMBEDDED_CHECKPOINT_SECONDS
            assert EMBEDDED_CHECKPOINT_SECONDS > CHECKPOINT_SECONDS
            return
        identity = fabric.enroll("alice")
        wal = tmp_path / "board" / "board.db-wal"
        largest = 0

        async def claims() -> None:
            nonlocal largest
            async with fabric.connect(identity) as agent:
                ids = [f"t{i:04d}" for i in range(1500)]
                for start in range(0, len(ids), 500):
                    await agent.create_tasks(
                        [{"id": i, "title": "x"} for i in ids[start : start + 500]]
                    )
                for task_id in ids:  # each claim writes several pages: ~10,000 in all
                    await agent.claim(task_id)
                    largest = max(largest, wal.stat().st_size)

        asyncio.run(claims())
        assert largest < 8 << 20  # 1,000 pages of 4 KiB and one batch past them


def test_an_embedded_enrollment_is_witnessed_as_a_server_s_is(tmp_path: Path) -> None:
    with Fabric.open(tmp_path / "board") as fabric:
        alice = SigningIdentity.generate(agent_id("alice"))
        with pytest.raises(ServiceError) as refused:  # a swarm the policy does not know
            fabric.enroll(alice, ["code:python"], swarm="no-such-swarm")
        assert refused.value.code == "INVALID_MANIFEST"
        assert fabric.state.keyring.get(alice.kid) is None  # nothing trusted, unwitnessed
        fabric.enroll(alice, ["code:python"])
        fabric.enroll(alice, ["code:python", "review:code"])  # the same key: no key event

        async def witnessed() -> list[dict[str, Any]]:
            async with fabric.connect(alice) as agent:
                for _ in range(100):  # the witness signs a checkpoint within a second
                    with contextlib.suppress(RemoteError):
                        entries = [e["entry"] for e in await agent.witness_entries(0, 20)]
                        if sum(e["component"] == "keys" for e in entries) >= 3:
                            return entries
                    await asyncio.sleep(0.1)
                raise AssertionError("the enrollments were not witnessed within 10 s")

        entries = asyncio.run(witnessed())
    kinds = [(e["event"], e["payload"].get("agent")) for e in entries if e["component"] == "keys"]
    assert kinds == [
        ("key.added", alice.agent),
        ("agent.enrolled", alice.agent),
        ("agent.enrolled", alice.agent),
    ]


def test_agents_in_threads_of_their_own_share_one_embedded_fabric(tmp_path: Path) -> None:
    """Each thread runs its agent with ``asyncio.run``: an event loop each. The committer
    served one loop at a time, and the others' calls failed with a RuntimeError (their
    tasks left claimed)."""
    with _crew(tmp_path, 8) as (fabric, agents):
        completed: Counter[str] = Counter()
        errors: list[BaseException] = []

        async def plan() -> None:
            async with fabric.connect(agents[0]) as planner:
                await planner.create_tasks([{"id": f"t{i:03d}", "title": "x"} for i in range(600)])

        async def work(identity: SigningIdentity) -> None:
            async with fabric.connect(identity) as agent:
                while (task := await agent.claim_next()) is not None:
                    await agent.complete(task["id"])
                    completed[task["id"]] += 1  # (Counter updates are atomic under the GIL)

        def thread(identity: SigningIdentity) -> None:
            try:
                asyncio.run(work(identity))
            except BaseException as exc:
                errors.append(exc)

        asyncio.run(plan())
        threads = [threading.Thread(target=thread, args=(agent,)) for agent in agents]
        for started in threads:
            started.start()
        for started in threads:
            started.join(timeout=120)
        assert not any(started.is_alive() for started in threads)
        assert errors == []
        assert len(completed) == 600
        assert set(completed.values()) == {1}
        states = Counter(task.state.value for task in fabric.state.service.store.tasks())
        assert states == {"completed": 600}


def test_an_agent_keeps_working_after_a_second_client_signs_as_it(tmp_path: Path) -> None:
    """As ``ifab task progress ... --as coder`` beside the running agent does: the agent's
    heartbeats were OUT_OF_SEQUENCE from then on, and its lease ran out."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        coder = fabric.enroll("coder")

        async def scenario() -> None:
            async with fabric.connect(coder, signed=True) as agent:
                await agent.create_task("t", id="t")
                await agent.claim("t")
                await asyncio.sleep(0.2)  # its numbers counted from its start, 200 ms ago
                async with fabric.connect(coder, signed=True) as shell:
                    await shell.progress("t", 25, "from a shell")
                for _ in range(3):
                    assert (await agent.heartbeat("t"))["owner"] == coder.agent
                await agent.progress("t", 50, "the agent again")
                async with fabric.connect(coder, signed=True) as shell:
                    milestones = (await shell.task("t"))["milestones"]
                    assert [m["percent"] for m in milestones] == [25, 50]

        asyncio.run(scenario())


def test_blocking_clients_in_threads_share_an_embedded_fabric(tmp_path: Path) -> None:
    """``connect_sync``: each SyncClient runs its own event loop in a thread."""
    with _crew(tmp_path, 4) as (fabric, agents):
        with fabric.connect_sync(agents[0]) as planner:
            planner.create_tasks([{"id": f"t{i:03d}", "title": "x"} for i in range(200)])
        completed: Counter[str] = Counter()
        errors: list[BaseException] = []

        def work(identity: SigningIdentity) -> None:
            try:
                with fabric.connect_sync(identity) as agent:
                    while (task := agent.claim_next()) is not None:
                        agent.complete(task["id"])
                        completed[task["id"]] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(agent,)) for agent in agents]
        for started in threads:
            started.start()
        for started in threads:
            started.join(timeout=120)
        assert errors == []
        assert len(completed) == 200
        assert set(completed.values()) == {1}


def test_two_clients_of_one_identity_at_once_even_on_clocks_apart(tmp_path: Path) -> None:
    """Numbers that follow the clock still meet: two clients signing in the same
    millisecond drew the same number (the second a REPLAY), and a client whose clock is
    behind the other's by more than the window (64 ms) was below it. Refused for its
    number alone, a message is signed again past the server's highest (four tries at most)."""
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        coder = fabric.enroll("coder")

        async def scenario() -> None:
            async with (
                fabric.connect(coder, signed=True) as agent,
                fabric.connect(coder, signed=True) as bridge,
            ):
                await agent.create_task("t", id="t")
                await agent.claim("t")
                beats = [client.heartbeat("t") for _ in range(40) for client in (agent, bridge)]
                assert len(await asyncio.gather(*beats)) == 80
                bridge._outbox.last_sequence += 200_000  # its clock 200 s ahead
                for _ in range(5):
                    for client in (agent, bridge):
                        assert (await client.heartbeat("t"))["owner"] == coder.agent

        asyncio.run(scenario())


def test_in_audit_mode_a_forged_acknowledgment_empties_no_inbox(tmp_path: Path) -> None:
    """Audit mode carries out what fails a check (and witnesses the failure); a forged
    ack, in anyone's name, took the message out of that agent's inbox for good."""
    state = open_server(tmp_path / "data", synchronous="NORMAL", verify_mode=Mode.AUDIT)
    with Fabric(state, sweep_every=60.0) as fabric:
        alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

        async def scenario() -> None:
            async with fabric.connect(bob) as sender:
                await sender.send(alice.agent, "inform", {"secret": 1})
            [entry] = state.service.store.pending(alice.agent)
            forger = Outbox(SigningIdentity.generate(alice.agent), last_sequence=10**13)
            forged = forger.message(
                now=time.time(),
                performative="request",
                receiver=ops.INBOX,
                content={"op": "ack", "position": entry.position},
            )
            with pytest.raises(ServiceError) as refused:
                await state.committer.submit(encode_json(forged), time.time())
            assert (refused.value.code, refused.value.status) == ("NOT_VERIFIED", 403)
            assert [e.position for e in state.service.store.pending(alice.agent)] == [
                entry.position
            ]
            async with fabric.connect(alice) as owner:  # her own, signed: gone
                assert await owner.ack(entry.position) is True
            assert state.service.store.pending(alice.agent) == []
            # her own again, under a number another client of hers took (audit mode takes
            # it, with a reason): her signature is what an acknowledgment needs
            async with fabric.connect(bob) as sender:
                await sender.send(alice.agent, "inform", {"secret": 2})
            [second] = state.service.store.pending(alice.agent)
            hers = Outbox(alice, last_sequence=10**14)
            await state.committer.submit(
                encode_json(
                    hers.message(
                        now=time.time(), performative="inform", receiver=bob.agent, content={}
                    )
                ),
                time.time(),
            )
            hers.last_sequence -= 1  # the same number, a fresh nonce
            again = hers.message(
                now=time.time(),
                performative="request",
                receiver=ops.INBOX,
                content={"op": "ack", "position": second.position},
            )
            reply = await state.committer.submit(encode_json(again), time.time())
            assert reply == {"acknowledged": True}
            assert state.service.store.pending(alice.agent) == []

        asyncio.run(scenario())


def test_the_very_bytes_again_after_a_restart_are_refused_without_a_highest(
    tmp_path: Path,
) -> None:
    """The windows come back from the store, the nonces do not: the same create again
    was refused by the window with a highest, and the SDK would sign it anew (a proxy
    delivering a POST once more made two tasks)."""
    alice = SigningIdentity.generate(agent_id("alice"))
    outbox = Outbox(alice, follow_clock=True)
    create = encode_json(
        outbox.message(
            now=time.time(),
            performative="request",
            receiver=ops.BOARD,
            content={"op": "create", "tasks": [{"title": "once"}]},
        )
    )
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        fabric.enroll(alice)
        asyncio.run(fabric.state.committer.submit(create, time.time()))
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        with pytest.raises(ServiceError) as refused:
            asyncio.run(fabric.state.committer.submit(create, time.time()))
        assert (refused.value.code, refused.value.highest) == ("REPLAY", None)
        assert [task.title for task in fabric.state.service.store.tasks()] == ["once"]


def _events(fabric: Fabric, component: str) -> list[tuple[str, str | None]]:
    """The ``component`` events in the board's log: (kind, the agent they name)."""
    stored = fabric.state.service.store.events_since(0, 1000)
    return [
        (s.event.kind, s.event.payload.get("agent"))
        for s in stored
        if s.event.component == component
    ]


def test_a_key_is_trusted_only_once_its_enrollment_is_witnessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key was trusted, and its keyring file written, before the commit recording
    it: a commit that failed (or a crash before it) left a key trusted that no event
    recorded, and enrolling again recorded none either (nothing new to trust)."""
    with Fabric.open(tmp_path / "board") as fabric:
        store = fabric.state.service.store
        bob = SigningIdentity.generate(agent_id("bob"))

        def lost(*args: object) -> None:
            raise StoreError("disk full (a fault made for the test)")

        with monkeypatch.context() as faults:
            faults.setattr(store, "enroll", lost)
            with pytest.raises(StoreError):
                fabric.enroll(bob, ["code:python"])
        assert fabric.state.keyring.get(bob.kid) is None
        assert not (fabric.state.keyring_dir / "bob.json").exists()
        fabric.enroll(bob, ["code:python"])  # the operator tries again
        assert fabric.state.keyring.get(bob.kid) is not None
        assert _events(fabric, "keys") == [("key.added", bob.agent), ("agent.enrolled", bob.agent)]


def test_a_lent_key_is_trusted_only_once_its_lending_is_witnessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lending whose batch failed (503, "send again") left the key trusted anyway, and
    written to the keyring directory, with no key.delegated event."""
    with Fabric.open(tmp_path / "board") as fabric:
        alice = fabric.enroll("alice")
        lent = SigningIdentity.generate(alice.agent)
        coordinator = fabric.state.service.coordinator

        def lost(events: Any) -> None:
            raise StoreError("disk full (a fault made for the test)")

        async def scenario() -> None:
            async with fabric.connect(alice) as agent:
                with monkeypatch.context() as faults:
                    faults.setattr(coordinator, "record", lost)
                    with pytest.raises(RemoteError) as refused:
                        await agent.delegate(lent.public_key, 3600)
                    assert refused.value.status == 503
                assert fabric.state.keyring.get(lent.kid) is None
                assert lent.kid not in (fabric.state.keyring_dir / "alice.json").read_text()
                await agent.delegate(lent.public_key, 3600)
                assert fabric.state.keyring.get(lent.kid) is not None
                assert lent.kid in (fabric.state.keyring_dir / "alice.json").read_text()
                await agent.recall(lent.kid)
                recalled = fabric.state.keyring.get(lent.kid)
                assert recalled is not None
                assert recalled.state == "revoked"

        asyncio.run(scenario())
        assert [kind for kind, _ in _events(fabric, "keys")][-2:] == [
            "key.delegated",
            "key.recalled",
        ]


def test_a_recall_takes_effect_before_its_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applied after the commit, a recall whose keyring file was then lost (a crash, a
    full disk) was witnessed and answered "revoked" while the file still said active:
    the key was trusted again after a restart. It fails closed now: the key is recalled
    first, even if the event then cannot be recorded (the agent sends it again)."""
    lent = SigningIdentity.generate(agent_id("alice"))
    with Fabric.open(tmp_path / "board") as fabric:
        alice = fabric.enroll("alice")
        coordinator = fabric.state.service.coordinator

        def lost(events: Any) -> None:
            raise StoreError("disk full (a fault made for the test)")

        async def scenario() -> None:
            async with fabric.connect(alice) as agent:
                await agent.delegate(lent.public_key, 3600)
                with monkeypatch.context() as faults:
                    faults.setattr(coordinator, "record", lost)
                    with pytest.raises(RemoteError) as refused:
                        await agent.recall(lent.kid)
                    assert refused.value.status == 503
                recalled = fabric.state.keyring.get(lent.kid)
                assert recalled is not None
                assert recalled.state == "revoked"  # though no event says so yet
                await agent.recall(lent.kid)  # sent again: now witnessed

        asyncio.run(scenario())
        assert [kind for kind, _ in _events(fabric, "keys")][-2:] == [
            "key.delegated",
            "key.recalled",
        ]
    with Fabric.open(tmp_path / "board") as reopened:
        record = reopened.state.keyring.get(lent.kid)
        assert record is not None
        assert record.state == "revoked"


def test_a_revocation_by_enrollment_whose_commit_failed_is_recorded_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation takes effect before its event (failing closed); when the commit
    then failed, the retry found the key revoked already and recorded nothing."""
    with Fabric.open(tmp_path / "board") as fabric:
        alice = fabric.enroll("alice")
        key = fabric.state.keyring.get(alice.kid)
        assert key is not None
        revoked = Keyring([key]).revoke(alice.kid, time.time())
        agent_record = fabric.state.service.agent(alice.agent)
        assert agent_record is not None

        def enroll_again() -> None:
            enroll_keys(fabric.state, agent_record, [revoked], Manifest(), time.time())

        def lost(*args: object) -> None:
            raise StoreError("disk full (a fault made for the test)")

        with monkeypatch.context() as faults:
            faults.setattr(fabric.state.service.store, "enroll", lost)
            with pytest.raises(StoreError):
                enroll_again()
        assert fabric.state.keyring.get(alice.kid).state == "revoked"  # type: ignore[union-attr]
        enroll_again()  # the operator tries again
        assert _events(fabric, "keys")[-2:] == [
            ("key.revoked", alice.agent),
            ("agent.enrolled", alice.agent),
        ]
        enroll_again()  # and once recorded, it is not recorded again
        assert _events(fabric, "keys")[-2:] == [
            ("agent.enrolled", alice.agent),
            ("agent.enrolled", alice.agent),
        ]
