"""Group commit: many messages per transaction, each answered on its own."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from infrafabric import Keyring, Outbox, SigningIdentity, agent_id, encode_json, new_key_record
from infrafabric.board.model import BoardEvent
from infrafabric.coordinator import Coordinator
from infrafabric.protocol.verify import Verifier
from infrafabric.server.committer import Committer
from infrafabric.service import FabricService, ServiceError
from infrafabric.storage.base import AgentRecord
from infrafabric.storage.sqlite import SqliteStore
from infrafabric.types import Timestamp


class RecordingService(FabricService):
    """The real service, noting the size of every batch it is given."""

    sizes: list[int]
    threads: set[int]

    def handle_batch(
        self, batch: Sequence[tuple[bytes, Timestamp]]
    ) -> list[dict[str, Any] | ServiceError]:
        self.sizes.append(len(batch))
        self.threads.add(threading.get_ident())
        return super().handle_batch(batch)


def _service(path: Path, agents: list[SigningIdentity]) -> RecordingService:
    keyring = Keyring()
    store = SqliteStore(path, synchronous="FULL")
    for identity in agents:
        keyring.add(
            new_key_record(identity.agent, identity.public_key, version=1, now=time.time() - 60)
        )
        store.enroll(AgentRecord(id=identity.agent, enrolled_at=time.time()))
    service = RecordingService(Coordinator(store), Verifier(keyring))
    service.sizes, service.threads = [], set()
    return service


def _refused(
    service: FabricService, how: str, write: str = "INSERT ON inbox"
) -> sqlite3.Connection:
    """Make SQLite itself refuse every ``write`` (as a full disk would), until ``DROP
    TRIGGER refuse``: ``ABORT`` fails that write alone, ``ROLLBACK`` loses the whole
    transaction. The store's connection, for dropping it."""
    db: sqlite3.Connection = service.store._db  # type: ignore[attr-defined]
    db.execute(
        f"CREATE TEMP TRIGGER refuse BEFORE {write}"
        f" BEGIN SELECT RAISE({how}, 'the disk said no'); END"
    )
    return db


def _note_to_self(outbox: Outbox) -> bytes:
    """A direct message to its own sender: a write to the inbox."""
    return encode_json(
        outbox.message(
            now=time.time(), performative="inform", receiver=outbox.identity.agent, content={}
        )
    )


def _request(outbox: Outbox, content: dict[str, Any]) -> bytes:
    return encode_json(
        outbox.message(
            now=time.time(), performative="request", receiver="if://service/board", content=content
        )
    )


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "on-loop"])
def test_messages_that_pile_up_share_a_commit_and_keep_their_own_answers(
    tmp_path: Path, on_loop: bool
) -> None:
    agents = [SigningIdentity.generate(agent_id(f"a{i}")) for i in range(41)]
    service = _service(tmp_path / "board.db", agents)
    announced_claims = 0
    lagging: list[tuple[int, int]] = []  # (claims announced, claims committed) if ever behind

    def check_claims_are_committed(events: Sequence[BoardEvent]) -> None:
        # announcements come after the commit: another connection already sees them all
        nonlocal announced_claims
        announced_claims += sum(event.kind == "task.claimed" for event in events)
        with sqlite3.connect(tmp_path / "board.db") as other:
            (committed,) = other.execute(
                "SELECT count(*) FROM tasks WHERE state = 'claimed'"
            ).fetchone()
        if committed < announced_claims:
            lagging.append((announced_claims, committed))

    service.on_events(check_claims_are_committed)
    observed: list[tuple[int, float]] = []  # what the batch observers (metrics) are told
    creator = Outbox(agents[0])
    created = service.handle(
        _request(creator, {"op": "create", "tasks": [{"title": "x"} for _ in range(30)]}),
        now=time.time(),
    )
    assert len(created["tasks"]) == 30
    service.batch_observers.append(lambda size, seconds: observed.append((size, seconds)))
    committer = Committer(service, on_loop=on_loop)

    async def everyone_claims() -> list[Any]:
        jobs = []
        for identity in agents[:40]:
            outbox = creator if identity is agents[0] else Outbox(identity)
            wire = _request(outbox, {"op": "claim_next"})
            jobs.append(committer.submit(wire, time.time()))
        forged = _request(Outbox(agents[40]), {"op": "claim_next"}).replace(
            b"claim_next", b"claim_nexT"
        )
        jobs.append(committer.submit(forged, time.time()))
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(everyone_claims())
    finally:
        committer.close()
    tasks = [r["task"] for r in results[:-1]]
    won = [task["id"] for task in tasks if task is not None]
    assert len(won) == len(set(won)) == 30  # every task once; ten agents found none left
    assert tasks.count(None) == 10
    assert isinstance(results[-1], ServiceError)
    assert results[-1].code == "BAD_SIGNATURE"
    assert max(service.sizes) > 1  # the 41 messages did not take 41 commits
    assert sum(service.sizes) == 41
    assert [size for size, _ in observed] == service.sizes  # each batch told once, whole
    assert all(seconds > 0 for _, seconds in observed)
    assert announced_claims == 30
    assert lagging == []


def test_a_failed_commit_refuses_the_whole_batch_and_announces_nothing(tmp_path: Path) -> None:
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    announced: list[Any] = []
    service.on_events(announced.append)
    outbox = Outbox(agent)
    batch = [
        (_request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time()),
        (_request(outbox, {"op": "claim_next"}), time.time()),
    ]
    blocker = sqlite3.connect(tmp_path / "board.db", timeout=0)
    blocker.execute("PRAGMA busy_timeout=0")
    service.store._db.execute("PRAGMA busy_timeout=0")  # type: ignore[attr-defined]
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        results = service.handle_batch(batch)
    finally:
        blocker.rollback()
        blocker.close()
    assert [getattr(r, "code", None) for r in results] == ["STORE_UNAVAILABLE"] * 2
    assert announced == []
    assert service.store.tasks() == []


def test_a_batch_lost_after_its_messages_were_verified_may_be_sent_again(
    tmp_path: Path,
) -> None:
    """The batch's transaction is lost after its first message was verified and carried
    out (SQLite rolls it all back, as on an I/O error): nothing happened, so the very same
    bytes sent again are no replay; the verifier took back its record of them."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    outbox = Outbox(agent)
    db = _refused(service, "ROLLBACK")
    batch = [
        (_request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time()),
        (_note_to_self(outbox), time.time()),
        (_request(outbox, {"op": "claim_next"}), time.time()),
    ]
    lost = service.handle_batch(batch)
    assert [getattr(r, "code", None) for r in lost] == ["STORE_UNAVAILABLE"] * 3
    assert service.store.tasks() == []
    db.execute("DROP TRIGGER refuse")
    created, delivered, claimed = service.handle_batch(batch)
    assert isinstance(created, dict), created
    assert isinstance(delivered, dict), delivered
    assert isinstance(claimed, dict), claimed
    assert claimed["task"]["state"] == "claimed"
    # now that they were carried out, a third time is a replay
    again = service.handle_batch(batch[:1])
    assert [getattr(r, "code", None) for r in again] == ["REPLAY"]


def test_a_message_the_store_failed_alone_may_be_sent_again(tmp_path: Path) -> None:
    """A message refused on its own by a store error (the rest of its batch committed)
    was not carried out: the same bytes again are accepted, not refused as a replay."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    outbox = Outbox(agent)
    db = _refused(service, "ABORT")  # this write only, not the batch
    direct = _note_to_self(outbox)
    create = _request(outbox, {"op": "create", "tasks": [{"title": "x"}]})
    first = service.handle_batch([(direct, time.time()), (create, time.time())])
    assert getattr(first[0], "code", None) == "STORE_UNAVAILABLE"
    assert isinstance(first[1], dict)  # its neighbour in the batch was carried out
    # the window kept for a restart holds the creation's number (2), not the refused
    # message's (1): after a crash, too, it may come again
    assert service.store.sequences() == [(agent.agent, 2, 0b1)]
    db.execute("DROP TRIGGER refuse")
    (second,) = service.handle_batch([(direct, time.time())])
    assert isinstance(second, dict), second
    assert second["delivered"][0]["receiver"] == agent.agent
    (third,) = service.handle_batch([(create, time.time())])
    assert getattr(third, "code", None) == "REPLAY"


def test_a_board_change_the_store_failed_may_be_sent_again(tmp_path: Path) -> None:
    """The same for a board change: the coordinator answers a store error with a 503
    refusal of its own, and that, too, leaves the message free to come again."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    outbox = Outbox(agent)
    (created,) = service.handle_batch(
        [(_request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time())]
    )
    assert isinstance(created, dict), created
    db = _refused(service, "ABORT", "UPDATE ON tasks")
    claim = _request(outbox, {"op": "claim_next"})
    (refused,) = service.handle_batch([(claim, time.time())])
    assert isinstance(refused, ServiceError)
    assert (refused.code, refused.status) == ("STORE_UNAVAILABLE", 503)
    assert service.store.sequences() == [(agent.agent, 1, 0b1)]  # only the creation's
    db.execute("DROP TRIGGER refuse")
    (claimed,) = service.handle_batch([(claim, time.time())])
    assert isinstance(claimed, dict), claimed
    assert claimed["task"]["state"] == "claimed"
    (again,) = service.handle_batch([(claim, time.time())])
    assert getattr(again, "code", None) == "REPLAY"


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "on-loop"])
@pytest.mark.parametrize("max_batch", [1, 64])
def test_close_finishes_what_was_submitted(tmp_path: Path, max_batch: int, on_loop: bool) -> None:
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    committer = Committer(service, max_batch=max_batch, on_loop=on_loop)
    outbox = Outbox(agent)

    async def create_then_close() -> dict[str, Any]:
        pending = asyncio.ensure_future(
            committer.submit(
                _request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time()
            )
        )
        await asyncio.sleep(0)  # submitted
        await asyncio.to_thread(committer.close)
        return await pending

    reply = asyncio.run(create_then_close())
    assert [task["title"] for task in reply["tasks"]] == ["x"]


def test_a_failing_listener_or_message_does_not_refuse_the_others(tmp_path: Path) -> None:
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    heard: list[str] = []

    def broken(events: Sequence[BoardEvent]) -> None:
        raise RuntimeError("a listener that breaks")

    service.on_events(broken)
    service.on_events(lambda events: heard.extend(event.kind for event in events))

    def deliver_breaks(*arguments: object) -> int:
        raise RuntimeError("a bug on the inbox path")

    service.store.deliver = deliver_breaks  # type: ignore[method-assign]
    outbox = Outbox(agent)
    direct = encode_json(
        outbox.message(now=time.time(), performative="inform", receiver=agent.agent, content={})
    )
    batch = [
        (_request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time()),
        (direct, time.time()),
        (_request(outbox, {"op": "claim_next"}), time.time()),
    ]
    first, second, third = service.handle_batch(batch)
    assert isinstance(first, dict)
    assert isinstance(second, ServiceError)
    assert (second.code, second.status) == ("INTERNAL", 500)
    assert isinstance(third, dict)
    assert third["task"]["state"] == "claimed"
    assert heard == ["task.created", "task.claimed"]  # after the broken one, in order


def test_a_message_left_behind_by_a_stopping_committer_is_refused_not_lost(
    tmp_path: Path,
) -> None:
    agent = SigningIdentity.generate(agent_id("a"))
    committer = Committer(_service(tmp_path / "board.db", [agent]))

    async def left_behind() -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        # queued behind the stop, as a request racing the shutdown would be
        committer._queues[0].put(
            (_request(Outbox(agent), {"op": "claim_next"}), time.time(), future, loop)
        )
        await asyncio.to_thread(committer.close)
        return await asyncio.wait_for(future, 10)

    with pytest.raises(ServiceError) as refused:
        asyncio.run(left_behind())
    assert (refused.value.code, refused.value.status) == ("STORE_UNAVAILABLE", 503)


def test_with_several_threads_one_connection_s_messages_keep_their_order(
    tmp_path: Path,
) -> None:
    agents = [SigningIdentity.generate(agent_id(f"w{n}")) for n in range(4)]
    committer = Committer(_service(tmp_path / "board.db", agents), workers=4)
    outboxes = [Outbox(agent) for agent in agents]

    async def pipelined(n: int) -> list[Any]:
        """Create, claim and complete a task, sent without waiting for the replies (as
        the SDK pipelines frames on one WebSocket); any reordering makes one fail."""
        task = f"t{n}"
        steps = [
            {"op": "create", "tasks": [{"id": task, "title": "x"}]},
            {"op": "claim", "task_id": task},
            {"op": "progress", "task_id": task, "percent": 50},
            {"op": "complete", "task_id": task},
        ]
        now = time.time()
        return list(
            await asyncio.gather(
                *(
                    committer.submit(_request(outboxes[n % 4], step), now, key=f"conn{n % 4}")
                    for step in steps
                )
            )
        )

    async def scenario() -> list[list[Any]]:
        return list(await asyncio.gather(*(pipelined(n) for n in range(40))))

    replies = asyncio.run(scenario())
    committer.close()
    assert len(replies) == 40
    assert all(reply[-1]["task"]["state"] == "completed" for reply in replies)


def test_with_several_threads_the_connections_are_spread_over_them(tmp_path: Path) -> None:
    """Each connection's messages go to one thread, and the connections to all of them.
    (Lanes chosen by a connection's own hash, its address, put a hundred connections
    on two threads of eight.)"""
    from infrafabric.server.hub import Connection

    agents = [SigningIdentity.generate(agent_id(f"s{n}")) for n in range(100)]
    service = _service(tmp_path / "board.db", agents)
    committer = Committer(service, workers=8)
    connections = [Connection(agent.agent, 10) for agent in agents]

    async def scenario() -> None:
        await asyncio.gather(
            *(
                committer.submit(
                    _request(Outbox(agent), {"op": "claim_next"}), time.time(), key=conn
                )
                for agent, conn in zip(agents, connections, strict=True)
            )
        )

    asyncio.run(scenario())
    committer.close()
    # 100 connections, 8 threads: all of them in use but for a chance of about 1e-5
    assert len(service.threads) >= 6


def test_on_the_loop_batches_run_on_the_loop_s_thread_in_order_and_bounded(
    tmp_path: Path,
) -> None:
    """No thread of its own: each batch runs on the submitting loop's thread, at most
    ``max_batch`` messages each, in the order submitted (pipelined frames of one agent
    that depend on each other)."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    committer = Committer(service, max_batch=4, on_loop=True)
    outbox = Outbox(agent)
    steps = [
        {"op": "create", "tasks": [{"id": "t", "title": "x"}]},
        {"op": "claim", "task_id": "t"},
        *({"op": "progress", "task_id": "t", "percent": p} for p in (25, 50, 75)),
        {"op": "heartbeat", "task_id": "t"},
        {"op": "heartbeat", "task_id": "t"},
        {"op": "heartbeat", "task_id": "t"},
        {"op": "heartbeat", "task_id": "t"},
        {"op": "complete", "task_id": "t"},
    ]

    async def pipelined() -> tuple[list[Any], int]:
        now = time.time()
        replies = await asyncio.gather(
            *(committer.submit(_request(outbox, step), now) for step in steps)
        )
        return list(replies), threading.get_ident()

    replies, loop_thread = asyncio.run(pipelined())
    committer.close()
    assert [reply["task"]["state"] for reply in replies[-2:]] == ["in_progress", "completed"]
    assert service.sizes == [4, 4, 2]
    assert service.threads == {loop_thread}
    assert committer._threads == []


def test_on_the_loop_close_called_on_the_loop_carries_out_what_waits_then_refuses(
    tmp_path: Path,
) -> None:
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    committer = Committer(service, on_loop=True)
    outbox = Outbox(agent)

    async def submit_then_close_here() -> tuple[Any, BaseException | None]:
        waiting = asyncio.ensure_future(
            committer.submit(
                _request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time()
            )
        )
        await asyncio.sleep(0)  # submitted, its batch not carried out yet
        assert service.sizes == []
        committer.close()  # on the loop itself: carried out here, not waited for
        assert service.sizes == [1]
        try:
            await committer.submit(_request(outbox, {"op": "claim_next"}), time.time())
        except ServiceError as exc:
            return await waiting, exc
        return await waiting, None

    reply, refusal = asyncio.run(submit_then_close_here())
    assert [task["title"] for task in reply["tasks"]] == ["x"]
    assert isinstance(refusal, ServiceError)
    assert (refusal.code, refusal.status) == ("STORE_UNAVAILABLE", 503)
    assert service.sizes == [1]  # the late one changed nothing


def test_on_the_loop_a_second_loop_may_follow_the_first(tmp_path: Path) -> None:
    """An app served again (a test client after another) gets its answers on its loop."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    committer = Committer(service, on_loop=True)
    outbox = Outbox(agent)
    for title in ("first", "second"):
        request = _request(outbox, {"op": "create", "tasks": [{"title": title}]})
        reply = asyncio.run(committer.submit(request, time.time()))
        assert reply["tasks"][0]["title"] == title
    committer.close()


def test_on_the_loop_a_loop_that_is_gone_is_forgotten(tmp_path: Path) -> None:
    """Each loop's queue is kept by the loop, weakly: a queue that named its loop kept
    every loop alive (one per ``asyncio.run``, per blocking client)."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    committer = Committer(service, on_loop=True)
    outbox = Outbox(agent)
    for n in range(20):
        request = _request(outbox, {"op": "create", "tasks": [{"title": f"t{n}"}]})
        asyncio.run(committer.submit(request, time.time()))
    gc.collect()
    assert len(committer._loops) == 0
    committer.close()


def test_on_the_loop_close_from_another_thread_answers_each_loop_s_waiting_once(
    tmp_path: Path,
) -> None:
    """A loop that cannot run its batch (held up) when the committer closes: what waits
    on it is refused, from the closing thread, once; later submissions are refused."""
    agent = SigningIdentity.generate(agent_id("a"))
    service = _service(tmp_path / "board.db", [agent])
    committer = Committer(service, on_loop=True)
    outbox = Outbox(agent)
    submitted, release = threading.Event(), threading.Event()
    answers: list[Any] = []

    async def held_up() -> None:
        waiting = asyncio.ensure_future(
            committer.submit(
                _request(outbox, {"op": "create", "tasks": [{"title": "x"}]}), time.time()
            )
        )
        await asyncio.sleep(0)  # in the queue, its batch due next
        submitted.set()
        release.wait(10)  # the loop held up: its batch cannot run
        for outcome in await asyncio.gather(waiting, return_exceptions=True):
            answers.append(outcome)
        try:
            await committer.submit(_request(outbox, {"op": "claim_next"}), time.time())
        except ServiceError as exc:
            answers.append(exc)

    thread = threading.Thread(target=asyncio.run, args=(held_up(),))
    thread.start()
    assert submitted.wait(10)
    committer.close(timeout=0.2)  # the loop runs but does not get to its batch
    release.set()
    thread.join(10)
    assert [(a.code, a.status) for a in answers] == [("STORE_UNAVAILABLE", 503)] * 2
    assert service.sizes == []  # refused, not carried out as well
