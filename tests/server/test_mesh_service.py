"""What the server does for the mesh: serves the keyring peers verify with, witnesses
the link events peers report, and shows their links on /v1/mesh and /metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrafabric.client import Client, RemoteError
from infrafabric.protocol.keyring import KEYRING_FORMAT
from infrafabric.protocol.message import encode_json
from infrafabric.protocol.verify import Mode
from infrafabric.server.runner import open_server, run_server
from tests.harness import signed_request
from tests.server.conftest import Fabric
from tests.server.test_metrics import PER_LINK, scrape

REPORT = {
    "members": 3,
    "links": [
        {"peer": "if://agent/bob", "band": "excellent", "rtt_ms": 0.4, "jitter_ms": 0.1,
         "loss_percent": 0.0},
        {"peer": "if://agent/carol", "relay": True, "band": "poor", "rtt_ms": 180.0,
         "jitter_ms": 35.0, "loss_percent": 10.0},
    ],
    "retrying": ["if://agent/dave"],
    "events": [
        {"kind": "mesh.reconnect", "peer": "if://agent/dave", "at": 1.0, "attempt": 4},
        {"kind": "mesh.relay_fallback", "peer": "if://agent/dave", "at": 1.0, "attempt": 4},
        {"kind": "mesh.quality_degraded", "peer": "if://agent/carol", "at": 2.0,
         "band": "poor", "rtt_ms": 180.0, "jitter_ms": 35.0, "loss_percent": 10.0},
    ],
}  # fmt: skip


def test_an_agent_reads_every_enrolled_key_and_an_outsider_nothing(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")
    bob = fabric.enroll("bob")

    async def read() -> Any:
        async with Client.connect(fabric.url, alice) as agent:
            return await agent.keys()

    document = asyncio.run(read())
    assert document.format == KEYRING_FORMAT
    assert {record.kid for record in document.keys} >= {alice.kid, bob.kid}
    assert all("seed" not in str(record) for record in document.keys)  # public halves only
    assert httpx.get(f"{fabric.url}/v1/keys").status_code == 401


def test_a_report_is_witnessed_and_shown_on_mesh_and_metrics(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def report() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with Client.connect(fabric.url, alice) as agent:
            reply = await agent.mesh_report(REPORT)
            status = await agent.mesh_status()
            deadline = time.monotonic() + 10
            while True:  # the witness takes the events within a second
                entries = (await agent.witness_search(0, component="mesh"))["entries"]
                if len(entries) == 3 or time.monotonic() > deadline:
                    return reply, status, entries
                await asyncio.sleep(0.1)

    reply, status, entries = asyncio.run(report())
    assert reply == {"recorded": 3}
    [peer] = status["peers"]
    assert (peer["agent"], peer["members"], peer["retrying"]) == (
        "if://agent/alice",
        3,
        ["if://agent/dave"],
    )
    assert [link["band"] for link in peer["links"]] == ["excellent", "poor"]
    witnessed = [(e["entry"]["event"], e["entry"]["actor"]) for e in entries]
    assert witnessed == [
        ("reconnect", "if://agent/alice"),
        ("relay_fallback", "if://agent/alice"),
        ("quality_degraded", "if://agent/alice"),
    ]
    assert entries[0]["entry"]["payload"] == {
        "peer": "if://agent/dave", "attempt": 4, "seen_at": 1.0
    }  # fmt: skip
    metrics = scrape(fabric)
    assert metrics["ifab_mesh_peers"][()] == 1
    assert metrics["ifab_mesh_links"][(("band", "poor"),)] == 1
    assert metrics["ifab_mesh_relay_links"][()] == 1
    labels = (("agent", "if://agent/alice"), ("peer", "if://agent/carol"))
    assert metrics["ifab_mesh_link_rtt_seconds"][labels] == pytest.approx(0.18)
    assert metrics["ifab_mesh_link_loss_ratio"][labels] == pytest.approx(0.10)
    assert metrics["ifab_mesh_link_jitter_seconds"][labels] == pytest.approx(0.035)
    assert set(metrics) >= PER_LINK


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"events": [{"kind": "mesh.party", "peer": "if://agent/b", "at": 1.0}]}, "kind"),
        ({"links": [{"peer": "not an agent"}]}, "peer"),
        ({"links": [{"peer": "if://agent/b", "loss_percent": 101}]}, "loss_percent"),
        ({"members": 0}, "members"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_report_is_refused_with_the_field_named(
    fabric: Fabric, change: dict[str, Any], field: str
) -> None:
    alice = fabric.enroll("alice")

    async def report() -> RemoteError:
        async with Client.connect(fabric.url, alice) as agent:
            with pytest.raises(RemoteError) as refused:
                await agent.mesh_report({**REPORT, **change})
            return refused.value

    refused = asyncio.run(report())
    assert refused.code == "INVALID_OPERATION"
    assert field in refused.detail


def test_only_the_fabric_publishes_mesh_status(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def publish() -> RemoteError:
        async with Client.connect(fabric.url, alice) as agent:
            with pytest.raises(RemoteError) as refused:
                await agent.send("if://topic/mesh-status", "inform", {"op": "report", **REPORT})
            return refused.value

    refused = asyncio.run(publish())
    assert (refused.code, refused.status) == ("RESERVED_TOPIC", 403)
    assert fabric.admin_get("/v1/mesh").json()["peers"] == []


def test_in_audit_mode_a_forged_report_speaks_for_nobody(tmp_path: Path) -> None:
    state = open_server(tmp_path / "data", synchronous="NORMAL", verify_mode=Mode.AUDIT)
    with run_server(state) as server:
        fabric = Fabric(server, state.sessions.admin_token)
        alice = fabric.enroll("alice")
        report = signed_request(alice, "if://service/mesh", {"op": "report", **REPORT})
        forged = encode_json(report).replace(b'"members":3', b'"members":4')
        reply = httpx.post(
            f"{fabric.url}/v1/messages",
            content=forged,
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 403
        assert reply.json()["error"]["code"] == "NOT_VERIFIED"
        assert fabric.admin_get("/v1/mesh").json()["peers"] == []


def test_per_link_series_are_capped_and_the_bands_still_count_every_link(
    fabric: Fabric,
) -> None:
    from infrafabric.server.metrics import MAX_LINK_SERIES

    state = fabric.server.state
    links = [{"peer": f"if://agent/p{n:04d}", "band": "good", "rtt_ms": 1.0} for n in range(1000)]
    for name in ("a1", "a2", "a3", "a4", "a5"):  # 5,000 link ends, as the servers publish them
        identity = fabric.enroll(name)
        message = signed_request(
            identity, "if://service/mesh", {"op": "report", "members": 9, "links": links}
        )
        state.mesh.on_topic("if://topic/mesh-status", encode_json(message))
    metrics = scrape(fabric)
    assert metrics["ifab_mesh_peers"][()] == 5
    assert metrics["ifab_mesh_links"][(("band", "good"),)] == 5000
    assert len(metrics["ifab_mesh_link_rtt_seconds"]) == MAX_LINK_SERIES
