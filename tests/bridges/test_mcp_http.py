"""`/mcp` on a real `ifab serve`: who may use it. A token is a key the agent lent with a
signed message; the server checks it like any key, on every request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from infrafabric.bridges.mcp.token import format_token
from infrafabric.client import Client, RemoteError
from infrafabric.keystore import Keystore
from infrafabric.protocol.identity import SigningIdentity
from tests.bridges.conftest import agent, data, http_session
from tests.harness import PASS, Fabric, ok

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


def post(fabric: Fabric, token: str | None) -> httpx.Response:
    headers = dict(MCP_HEADERS)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(f"{fabric.url}/mcp", json=INITIALIZE, headers=headers, timeout=30)


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    code: str = response.json()["error"]["code"]
    return code


async def test_requests_without_a_lent_key_are_refused_with_a_reason(fabric: Fabric) -> None:
    agent(fabric, "alice")
    assert refusal(post(fabric, None)) == "UNAUTHENTICATED"
    assert refusal(post(fabric, "not-a-token")) == "MALFORMED"
    stranger = SigningIdentity.generate("if://agent/alice")  # never lent
    assert refusal(post(fabric, format_token(stranger))) == "UNKNOWN_KEY"
    own = Keystore(fabric.home).unlock("alice", PASS)  # the agent's own key: never sent
    assert refusal(post(fabric, format_token(own))) == "NOT_DELEGATED"
    token = ok(fabric("mcp", "token", "--as", "alice", "--hours", "1")).strip()
    assert post(fabric, token).status_code == 200


async def test_a_recalled_token_stops_working_at_once(fabric: Fabric) -> None:
    agent(fabric, "alice")
    made = fabric("mcp", "token", "--as", "alice")
    token = ok(made).strip()
    kid = made.stderr.decode().split()[2]  # "lent key <kid> until <time>"
    async with http_session(fabric.url, token) as session:
        assert data(await session.call_tool("whoami", {}))["agent"] == "if://agent/alice"
    assert ok(fabric("mcp", "recall", kid, "--as", "alice")).startswith(f"recalled {kid}")
    assert refusal(post(fabric, token)) == "KEY_REVOKED"
    again = fabric("mcp", "recall", kid, "--as", "alice")  # already recalled: no error
    assert again.returncode == 0


def test_a_kid_that_begins_with_a_dash_is_taken_as_the_kid(fabric: Fabric) -> None:
    agent(fabric, "alice")
    refused = fabric("mcp", "recall", "-TifNwvgCRjoWUHc", "--as", "alice")
    assert refused.returncode == 1  # the server's answer (no such lent key), not a usage error
    assert b"NOT_FOUND: if://agent/alice lent no key -TifNwvgCRjoWUHc" in refused.stderr


async def test_a_lent_key_cannot_lend_itself_on_or_recall_others(fabric: Fabric) -> None:
    agent(fabric, "alice")
    own = Keystore(fabric.home).unlock("alice", PASS)
    async with Client.connect(fabric.url, own) as alice:
        lent = SigningIdentity.generate(own.agent)
        record = await alice.delegate(lent.public_key, 3600)
        assert (record["role"], record["state"]) == ("delegate", "active")
        with pytest.raises(RemoteError) as too_long:
            await alice.delegate(SigningIdentity.generate(own.agent).public_key, 31 * 86_400)
        assert too_long.value.code == "INVALID_OPERATION"
    async with Client.connect(fabric.url, lent) as delegate:
        with pytest.raises(RemoteError) as refused:
            await delegate.delegate(SigningIdentity.generate(own.agent).public_key, 3600)
        assert refused.value.code == "NOT_OWN_KEY"
        with pytest.raises(RemoteError) as recall:
            await delegate.recall(lent.kid)
        assert recall.value.code == "NOT_OWN_KEY"
        assert (await delegate.claim_next()) is None  # but it does act for alice


async def test_lending_a_key_is_witnessed_and_survives_a_restart(fabric: Fabric) -> None:
    agent(fabric, "alice")
    token = ok(fabric("mcp", "token", "--as", "alice")).strip()
    fabric.kill()
    fabric.start()
    async with http_session(fabric.url, token) as session:
        data(await session.call_tool("create_task", {"task_id": "t", "title": "After restart"}))
        claimed = data(await session.call_tool("claim_next", {}))["task"]
        assert claimed["owner"] == "if://agent/alice"
    entries = httpx.get(
        f"{fabric.url}/v1/witness/entries",
        params={"component": "keys", "limit": 100},
        headers={"authorization": f"Bearer {fabric.admin_token}"},
    ).json()["entries"]
    assert "key.delegated" in [found["entry"]["event"] for found in entries]


async def test_many_sessions_of_one_token_share_the_work(fabric: Fabric) -> None:
    agent(fabric, "lead")
    token = ok(fabric("mcp", "token", "--as", "lead")).strip()
    async with http_session(fabric.url, token) as session:
        for index in range(6):
            data(await session.call_tool("create_task", {"task_id": f"t{index}", "title": "T"}))

    async def worker() -> list[str]:
        taken = []
        async with http_session(fabric.url, token) as session:
            while (task := data(await session.call_tool("claim_next", {}))["task"]) is not None:
                taken.append(task["id"])
        return taken

    shares = await asyncio.gather(worker(), worker(), worker())
    claimed = [task for share in shares for task in share]
    assert sorted(claimed) == [f"t{index}" for index in range(6)]  # each exactly once


async def test_a_token_dies_with_the_key_that_lent_it(fabric: Fabric) -> None:
    agent(fabric, "alice")
    token = ok(fabric("mcp", "token", "--as", "alice")).strip()
    assert post(fabric, token).status_code == 200
    ok(fabric("identity", "rotate", "alice", "--emergency"))  # alice's key was stolen
    ok(fabric("agent", "enroll", "alice"))  # the server learns of the revocation
    assert refusal(post(fabric, token)) == "KEY_REVOKED"  # and of the thief's loans


def test_a_body_too_large_is_refused_before_it_is_read_whole(fabric: Fabric) -> None:
    """The MCP SDK read any body whole into memory; a lent key could send gigabytes."""
    agent(fabric, "alice")
    token = ok(fabric("mcp", "token", "--as", "alice")).strip()
    headers = {**MCP_HEADERS, "authorization": f"Bearer {token}"}
    padded = {**INITIALIZE, "padding": "x" * (300 * 1024)}
    declared = httpx.post(f"{fabric.url}/mcp", json=padded, headers=headers, timeout=30)

    def chunks() -> Iterator[bytes]:  # no content-length: counted while read
        yield b'{"padding": "'
        for _ in range(300):
            yield b"x" * 1024

    streamed = httpx.post(f"{fabric.url}/mcp", content=chunks(), headers=headers, timeout=30)
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "TOO_LARGE"
    assert post(fabric, token).status_code == 200  # a request of a sane size still works
