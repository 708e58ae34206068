"""`/metrics`, `/healthz` and `/readyz` of a real server: the exposition parsed with
`prometheus_client.parser`, every family the operations runbook and the alert rules use."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infrafabric import encode_json
from infrafabric.client import Client
from infrafabric.server.runner import open_server, run_server
from tests.harness import signed_request
from tests.redis_server import RedisServer
from tests.server.conftest import Fabric

FAMILIES = {
    "ifab_tasks", "ifab_claims", "ifab_operation_seconds", "ifab_lease_expiries",
    "ifab_blockers", "ifab_help_requests", "ifab_messages_in", "ifab_rejections",
    "ifab_messages_out", "ifab_inbox_depth", "ifab_witness_size", "ifab_witness_backlog",
    "ifab_witness_checkpoint_age_seconds", "ifab_spent_usd", "ifab_spent_tokens",
    "ifab_budget_remaining_usd", "ifab_breaker", "ifab_connected_agents",
    "ifab_websocket_connections", "ifab_websocket_queue_max", "ifab_websocket_queue_frames",
    "ifab_agents", "ifab_store_up", "ifab_board_events", "ifab_swarm_spent_usd",
    "ifab_swarm_budget_remaining_usd", "ifab_mesh_peers", "ifab_mesh_links",
    "ifab_mesh_relay_links", "ifab_commit_batch_seconds", "ifab_commit_batch_messages",
}  # fmt: skip
#: Families with a sample per mesh link: present once a peer reports one
#: (tests/server/test_mesh_service.py checks them).
PER_LINK = {
    "ifab_mesh_link_rtt_seconds",
    "ifab_mesh_link_jitter_seconds",
    "ifab_mesh_link_loss_ratio",
}


def scrape(fabric: Fabric) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of ``/metrics``, by family then labels."""
    response = fabric.admin_get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        found.setdefault(family.name, {})
    return found


def test_the_metrics_count_what_the_fabric_did(fabric: Fabric) -> None:
    alice = fabric.enroll("alice", ("code:python",))
    bob = fabric.enroll("bob", ("review:code",))

    async def work() -> None:
        async with Client.connect(fabric.url, alice) as a, Client.connect(fabric.url, bob) as b:
            await a.create_tasks([{"id": f"t{n}", "title": "T"} for n in range(3)])
            await a.claim("t0")
            await a.complete("t0", {"ok": True}, usage={"tokens_in": 100, "model": "m"})
            await a.claim("t1")
            await a.block("t1", "review", "needs eyes", needed=["review:code"])
            await a.request_help("t1", ["review:code"])
            await a.send("if://agent/bob", "inform", {"text": "hi"})
            async with b.stream():
                await asyncio.sleep(0.2)  # bob's WebSocket is open while we scrape
                metrics = await asyncio.to_thread(scrape, fabric)
                assert metrics["ifab_connected_agents"][()] >= 1

    asyncio.run(work())
    carol = fabric.enroll("carol")  # her first message, sent twice: the second is a replay
    message = encode_json(
        signed_request(carol, "if://service/board", {"op": "claim_next"}, sequence_num=1)
    )
    replies = [httpx.post(f"{fabric.url}/v1/messages", content=message) for _ in range(2)]
    assert [reply.status_code for reply in replies] == [200, 409]
    for _ in range(50):  # the witness signs a checkpoint within a second
        metrics = scrape(fabric)
        if metrics.get("ifab_witness_checkpoint_age_seconds"):
            break
        time.sleep(0.1)
    assert set(metrics) >= FAMILIES, FAMILIES - set(metrics)
    assert metrics["ifab_tasks"][(("state", "completed"),)] == 1
    assert metrics["ifab_tasks"][(("state", "blocked"),)] == 1
    assert metrics["ifab_tasks"][(("state", "claimed"),)] == 1  # t2, by the claim_next
    assert metrics["ifab_claims_total"][()] == 3
    assert metrics["ifab_blockers_total"][()] == 1
    assert metrics["ifab_help_requests_total"][()] == 1
    # bob never acknowledged the message, nor the help request that invited him
    assert metrics["ifab_inbox_depth"][()] == 2
    assert metrics["ifab_messages_out_total"][(("kind", "direct"),)] == 2  # (both to bob)
    assert metrics["ifab_rejections_total"][(("reason", "REPLAY"),)] == 1
    assert metrics["ifab_messages_in_total"][(("outcome", "refused"),)] == 1
    claims = metrics["ifab_operation_seconds_count"]
    assert claims[(("op", "claim"),)] == 2
    assert claims[(("op", "claim_next"),)] == 1
    assert claims[(("op", "unverified"),)] == 1  # the replay: refused before it was read
    # every signed message was carried out in one group commit or another, counted once
    batches = metrics["ifab_commit_batch_messages_count"][()]
    assert metrics["ifab_commit_batch_messages_sum"][()] == sum(claims.values())
    assert 1 <= batches <= sum(claims.values())
    assert metrics["ifab_commit_batch_seconds_count"][()] == batches
    assert metrics["ifab_commit_batch_seconds_sum"][()] > 0
    assert metrics["ifab_agents"][(("health", "green"),)] == 2
    assert metrics["ifab_spent_tokens"][(("agent", "if://agent/alice"),)] == 100
    assert metrics["ifab_breaker"][(("agent", "if://agent/alice"), ("state", "closed"))] == 1
    assert metrics["ifab_witness_size"][()] > 5
    assert metrics["ifab_store_up"][()] == 1


def test_metrics_need_the_operator_token(fabric: Fabric) -> None:
    assert httpx.get(f"{fabric.url}/metrics").status_code == 401
    refused = httpx.get(f"{fabric.url}/metrics", headers={"authorization": "Bearer nope"})
    assert refused.json()["error"]["code"] == "UNAUTHENTICATED"
    # a header is Latin-1 on the wire: a token that is not ASCII was a 500 (TypeError)
    for path in ("/metrics", "/v1/tasks"):
        latin = httpx.get(
            f"{fabric.url}{path}", headers={"authorization": "Bearer \xe9t\xe9".encode("latin-1")}
        )
        assert (latin.status_code, latin.json()["error"]["code"]) == (401, "UNAUTHENTICATED")


def test_health_and_readiness(fabric: Fabric) -> None:
    health = httpx.get(f"{fabric.url}/healthz")
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    ready = httpx.get(f"{fabric.url}/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["store"]["ok"] is True
    assert checks["witness"]["ok"] is True
    assert checks["witness"]["backlog"] == 0


def test_a_store_that_does_not_answer_makes_the_server_not_ready(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()  # this test's own, to stop
    try:
        state = open_server(tmp_path / "data", store_url=redis.url)
        with run_server(state) as server:
            token = {"authorization": f"Bearer {state.sessions.admin_token}"}
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            redis.stop()
            ready = httpx.get(f"{server.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["store"]["ok"] is False
            metrics = httpx.get(f"{server.url}/metrics", headers=token)
            assert metrics.status_code == 200
            assert "ifab_store_up 0.0" in metrics.text
            redis.start()  # back: ready again, by itself
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            assert "ifab_store_up 1.0" in httpx.get(f"{server.url}/metrics", headers=token).text
    finally:
        redis.stop()
