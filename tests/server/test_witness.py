"""The witness over a real server: every board decision logged, proved and checked offline."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from infrafabric.client import Client, RemoteError
from infrafabric.witness import bundle as bundle_module
from infrafabric.witness.bundle import BundleError, verify_bundle
from infrafabric.witness.checkpoint import open_checkpoint
from infrafabric.witness.merkle import verify_consistency
from tests.harness import signed_request
from tests.server.conftest import Fabric

WITNESS_DIR = Path(bundle_module.__file__).parent


async def _signed_at_least(agent: Client, size: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        try:
            checkpoint = await agent.witness_checkpoint()
            if checkpoint["size"] >= size:
                return checkpoint
        except RemoteError as exc:
            if exc.code != "NOT_FOUND":
                raise
        assert time.monotonic() < deadline, "no checkpoint covered the decisions in time"
        await asyncio.sleep(0.1)


def test_board_decisions_are_witnessed_and_proved(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> dict[str, Any]:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_tasks([{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
            first = await _signed_at_least(agent, 5)
            await agent.claim("a")
            await agent.complete("a", {"ok": True})
            latest = await _signed_at_least(agent, 7)
            entries = await agent.witness_entries(0, 10)
            assert [
                (e["entry"]["component"], e["entry"]["event"], e["entry"].get("task_id"))
                for e in entries
            ] == [
                ("keys", "key.added", None),  # the enrollment, in one transaction
                ("keys", "agent.enrolled", None),
                ("governor", "agent.registered", None),
                ("board", "task.created", "a"),
                ("board", "task.created", "b"),
                ("board", "task.claimed", "a"),
                ("board", "task.completed", "a"),  # a success keeps its 1.0: no event
            ]
            assert entries[0]["entry"]["payload"]["agent"] == alice.agent
            assert entries[5]["entry"]["actor"] == alice.agent
            assert [e["entry"]["source"]["board_event"] for e in entries] == list(range(1, 8))
            by_index = await agent.witness_proof(5)
            by_hash = await agent.witness_proof(leaf=bytes.fromhex(entries[5]["leaf"]))
            assert by_index == by_hash
            consistency = await agent.witness_consistency(first["size"])
            old = open_checkpoint(first["checkpoint"], first["key"])
            new = open_checkpoint(latest["checkpoint"], latest["key"])
            verify_consistency(
                old.size,
                new.size,
                old.root,
                new.root,
                [base64.b64decode(node) for node in consistency["proof"]],
            )
            # both enrollment events land in one round: no tree of size 1 was ever signed
            for missing in ({"index": 99}, {"index": 0, "size": 1}):
                with pytest.raises(RemoteError) as refused:
                    await agent.witness_proof(**missing)
                assert (refused.value.code, refused.value.status) == ("NOT_FOUND", 404)
            return {"bundle": by_index, "key": latest["key"]}

    proved = asyncio.run(scenario())
    verified = verify_bundle(proved["bundle"], proved["key"])
    assert json.loads(verified.entry)["event"] == "task.claimed"
    forged = dict(proved["bundle"])
    forged["entry"] = base64.b64encode(verified.entry.replace(b"claimed", b"released")).decode()
    with pytest.raises(BundleError, match="inclusion"):
        verify_bundle(forged, proved["key"])


OFFLINE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from infrafabric.witness.bundle import verify_bundle
document = json.loads(sys.stdin.read())
verified = verify_bundle(document["bundle"], document["key"])
ours = sorted(name for name in sys.modules if name.startswith("infrafabric"))
print(json.dumps({"index": verified.index, "modules": ours}))
"""


def test_a_bundle_verifies_in_a_process_that_has_only_the_verification_modules(
    fabric: Fabric, tmp_path: Path
) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> dict[str, Any]:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_task("offline", id="o")
            checkpoint = await _signed_at_least(agent, 1)
            return {"bundle": await agent.witness_proof(0), "key": checkpoint["key"]}

    document = asyncio.run(scenario())
    # Just these three files, as someone auditing the fabric would copy them.
    package = tmp_path / "copy" / "infrafabric" / "witness"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for name in ("merkle.py", "checkpoint.py", "bundle.py"):
        shutil.copy(WITNESS_DIR / name, package / name)
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE, str(tmp_path / "copy")],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["index"] == 0
    assert report["modules"] == [
        "infrafabric",
        "infrafabric.witness",
        "infrafabric.witness.bundle",
        "infrafabric.witness.checkpoint",
        "infrafabric.witness.merkle",
    ]


def _witnessed(state: Any, size: int) -> list[dict[str, Any]]:
    """The first ``size`` entries of the (thread-fed) witness log, waiting for them."""
    deadline = time.monotonic() + 10
    while state.witness.log.size < size:
        assert time.monotonic() < deadline, f"{state.witness.log.size} entries, not {size}"
        time.sleep(0.05)
    return [json.loads(entry) for _, _, entry in state.witness.log.entries(0, size)]


def test_a_trace_and_the_reported_usage_follow_the_decisions_into_the_witness(
    fabric: Fabric,
) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> list[dict[str, Any]]:
        async with Client.connect(fabric.url, alice) as agent:
            with Client.trace("release-42"):
                await agent.create_tasks([{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
                await agent.claim("a")
                await agent.progress("a", 50, usage={"tokens_in": 10, "model": "small"})
                await agent.complete(
                    "a",
                    {"ok": True},
                    usage={"tokens_in": 1200, "tokens_out": 300, "model": "big", "usd": 0.02},
                )
            await agent.claim("b")  # outside the trace
            await _signed_at_least(agent, 11)
            return [e["entry"] for e in await agent.witness_entries(0, 20)]

    entries = asyncio.run(scenario())
    traced = [(e["event"], e.get("task_id")) for e in entries if e.get("trace_id") == "release-42"]
    assert traced == [  # the governor's decisions carry the trace of what caused them
        ("task.created", "a"),
        ("task.created", "b"),
        ("task.claimed", "a"),
        ("task.progress", "a"),
        ("usage.charged", "a"),
        ("task.completed", "a"),
        ("usage.charged", "a"),
    ]
    assert entries[-1]["event"] == "task.claimed"
    assert "trace_id" not in entries[-1]
    costs = {e["event"]: e.get("cost") for e in entries if e["component"] == "board"}
    assert costs["task.progress"] == {"tokens_in": 10, "tokens_out": 0, "usd": 0, "model": "small"}
    assert costs["task.completed"] == {
        "tokens_in": 1200,
        "tokens_out": 300,
        "usd": 0.02,
        "model": "big",
    }
    assert costs["task.claimed"] is None
    assert all("usage" not in e["payload"] for e in entries)


def test_the_spend_series_reads_each_costed_entry_once(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def spend(first: int, usds: tuple[float, ...]) -> None:
        async with Client.connect(fabric.url, alice) as agent:
            for n, usd in enumerate(usds, start=first):
                await agent.create_tasks([{"id": f"s{n}", "title": "S"}])
                await agent.claim(f"s{n}")
                await agent.complete(f"s{n}", usage={"usd": usd, "model": "m"})
            await _signed_at_least(agent, 3 * (first + len(usds)))

    def spend_now() -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:  # (the witness takes the last costs within a second)
            reply = fabric.admin_get("/v1/witness/spend")
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            if body["next"] == body["size"] and len(body["points"]) == expected_points:
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.1)

    assert fabric.admin_get("/v1/witness/spend").json()["points"] == []
    asyncio.run(spend(0, (0.25, 0.5)))
    expected_points = 3  # from nothing, then each costed step
    first = spend_now()
    assert [usd for _, usd in first["points"]] == [0, 0.25, 0.75]
    assert first["total_usd"] == 0.75
    asyncio.run(spend(2, (1.0,)))
    expected_points = 4
    later = spend_now()
    assert [usd for _, usd in later["points"]] == [0, 0.25, 0.75, 1.75]  # counted once

    async def through_the_sdk() -> dict[str, Any]:
        async with Client.connect(fabric.url, alice) as agent:
            return await agent.witness_spend()

    assert asyncio.run(through_the_sdk())["total_usd"] == 1.75
    assert httpx.get(f"{fabric.url}/v1/witness/spend").status_code == 401


def test_a_damaged_costed_entry_is_left_out_of_spend_and_nothing_counted_twice(
    fabric: Fabric, tmp_path: Path
) -> None:
    """An entry whose time does not parse raised ValueError half-way through a page:
    every request answered 500 from then on, and each added the entries before it
    again."""
    import contextlib
    import sqlite3

    alice = fabric.enroll("alice")

    async def spend() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            for n, usd in enumerate((0.25, 0.5, 1.0)):
                await agent.create_tasks([{"id": f"s{n}", "title": "S"}])
                await agent.claim(f"s{n}")
                await agent.complete(f"s{n}", usage={"usd": usd, "model": "m"})
            await _signed_at_least(agent, 9)

    asyncio.run(spend())
    completed = fabric.admin_get("/v1/witness/entries?event=task.completed").json()["entries"]
    damaged = completed[1]["index"]  # the 0.5
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "witness.db")) as db:
        db.execute(
            'UPDATE entries SET entry = replace(entry, \'"at":"2\', \'"at":"X\') WHERE idx = ?',
            (damaged,),
        )
        db.commit()
    for _ in range(3):
        reply = fabric.admin_get("/v1/witness/spend")
        assert reply.status_code == 200, reply.text
        assert reply.json()["total_usd"] == 1.25  # 0.25 + 1.0, each once


def test_usage_out_of_bounds_is_refused_with_the_field_named(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> RemoteError:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_task("A", id="a")
            await agent.claim("a")
            with pytest.raises(RemoteError) as refused:
                await agent.complete("a", usage={"tokens_in": -1})
            return refused.value

    refused = asyncio.run(scenario())
    assert (refused.code, refused.status) == ("INVALID_OPERATION", 422)
    assert "tokens_in" in refused.detail


def test_a_rotated_key_is_witnessed_with_the_old_one_deprecated(fabric: Fabric) -> None:
    import httpx

    from infrafabric import SigningIdentity, agent_id, new_key_record
    from infrafabric.protocol.keyring import Keyring

    agent = agent_id("rotor")
    now = time.time() - 60
    first = SigningIdentity.generate(agent)
    second = SigningIdentity.generate(agent, version=2)
    keyring = Keyring()
    old = keyring.add(new_key_record(agent, first.public_key, version=1, now=now))

    def enroll() -> None:
        document = {"keys": msgspec.to_builtins(keyring.to_file(agent))}
        response = httpx.post(
            f"{fabric.url}/v1/admin/agents",
            json=document,
            headers={"authorization": f"Bearer {fabric.admin}"},
        )
        assert response.status_code == 200, response.text

    enroll()
    new = keyring.add(new_key_record(agent, second.public_key, version=2, now=now + 1))
    keyring.deprecate(old.kid, now + 1, replaced_by=new.kid)
    enroll()

    async def scenario() -> list[dict[str, Any]]:
        async with Client.connect(fabric.url, second) as client:
            await _signed_at_least(client, 7)  # and the governor's two registrations
            return [e["entry"] for e in await client.witness_entries(0, 10)]

    entries = [e for e in asyncio.run(scenario()) if e["component"] == "keys"]
    assert [(e["component"], e["event"], e["payload"].get("kid")) for e in entries] == [
        ("keys", "key.added", old.kid),
        ("keys", "agent.enrolled", None),
        ("keys", "key.deprecated", old.kid),
        ("keys", "key.rotated", new.kid),
        ("keys", "agent.enrolled", None),
    ]
    assert entries[3]["payload"]["version"] == 2


def test_audit_mode_witnesses_every_failed_check(
    tmp_path: Path,
) -> None:
    import httpx

    from infrafabric.protocol.message import encode_json
    from infrafabric.protocol.verify import Mode
    from infrafabric.server.runner import open_server, run_server
    from tests.server.conftest import Fabric as ServerFabric

    state = open_server(tmp_path / "data", synchronous="NORMAL", verify_mode=Mode.AUDIT)
    with run_server(state) as server:
        fabric = ServerFabric(server, state.sessions.admin_token)
        alice = fabric.enroll("alice")
        signed = signed_request(
            alice, "if://service/board", {"op": "create", "tasks": [{"id": "a", "title": "A"}]}
        )
        forged = encode_json(signed).replace(b'"title":"A"', b'"title":"B"')

        def post(body: bytes) -> httpx.Response:
            return httpx.post(
                f"{fabric.url}/v1/messages",
                content=body,
                headers={"content-type": "application/json"},
            )

        assert post(b"{not json").json()["error"]["code"] == "MALFORMED"
        assert post(forged).status_code == 200  # audit mode: accepted, and flagged
        entries = _witnessed(state, 6)
    rejected, flagged, created = entries[3:]
    assert (rejected["component"], rejected["event"]) == ("verify", "message.rejected")
    assert rejected["payload"]["reason"] == "MALFORMED"
    assert rejected["payload"]["accepted"] is False
    assert (flagged["event"], flagged["payload"]["reason"]) == (
        "message.accepted_flagged",
        "BAD_SIGNATURE",
    )
    assert flagged["payload"]["claimed_sender"] == alice.agent
    assert "actor" not in flagged  # a forged message proves nothing about its sender
    assert (created["event"], created["task_id"]) == ("task.created", "a")


def test_strict_mode_refuses_a_failed_check_without_witnessing_it(fabric: Fabric) -> None:
    """Strict (the default) keeps no record of refusals: anyone may post garbage, and the
    log must not grow with it."""
    import httpx

    alice = fabric.enroll("alice")
    refused = httpx.post(
        f"{fabric.url}/v1/messages", content=b"{not json", headers={"content-type": "x"}
    )
    assert refused.json()["error"]["code"] == "MALFORMED"

    async def scenario() -> list[dict[str, Any]]:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_task("A", id="a")
            await _signed_at_least(agent, 4)
            return [e["entry"] for e in await agent.witness_entries(0, 10)]

    assert [e["event"] for e in asyncio.run(scenario())] == [
        "key.added",
        "agent.enrolled",
        "agent.registered",
        "task.created",
    ]


def test_entries_are_searched_on_the_server_and_bad_filters_are_refused(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_tasks([{"id": f"t{n}", "title": "T"} for n in range(5)])
            for n in range(5):
                await agent.claim(f"t{n}")
            await _signed_at_least(agent, 13)
            page = await agent.witness_search(event="task.claimed", limit=2)
            assert [e["entry"]["task_id"] for e in page["entries"]] == ["t0", "t1"]
            assert page["size"] == 13
            rest = await agent.witness_search(page["next"], event="task.claimed", limit=100)
            assert [e["entry"]["task_id"] for e in rest["entries"]] == ["t2", "t3", "t4"]
            assert rest["next"] == rest["size"] == 13
            later = await agent.witness_search(since="2999-01-01T00:00:00Z")
            assert later["entries"] == []
            for bad in (
                {"since": "yesterday"},
                {"cost": "maybe"},
                {"component": "x" * 300},
            ):
                with pytest.raises(RemoteError) as refused:
                    await agent.witness_search(**bad)
                assert (refused.value.code, refused.value.status) == ("MALFORMED", 400)

    asyncio.run(scenario())


def test_a_range_of_entries_returns_up_to_a_thousand(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_tasks([{"id": f"t{n}", "title": "T"} for n in range(150)])
            size = (await _signed_at_least(agent, 153))["size"]
            entries = await agent.witness_entries(0, 1000)
            assert [e["index"] for e in entries] == list(range(size))
            assert len(await agent.witness_entries(10, 20)) == 10

    asyncio.run(scenario())


def test_witness_entries_without_an_end_reads_up_to_a_thousand(fabric: Fabric) -> None:
    """Without ``end`` the SDK sent only ``start``, and the server's default page of 100
    applied: the docstring promised the range up to 1,000."""
    alice = fabric.enroll("alice")

    async def scenario() -> tuple[int, int, int]:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_tasks([{"id": f"e{n:03d}", "title": "E"} for n in range(150)])
            size = (await _signed_at_least(agent, 150))["size"]
            return size, len(await agent.witness_entries()), len(await agent.witness_entries(120))

    size, everything, tail = asyncio.run(scenario())
    assert size >= 150
    assert (everything, tail) == (size, size - 120)
