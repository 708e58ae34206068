"""The dashboard's operator session: what its cookie opens, and what it does not."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets.asyncio.client
import websockets.exceptions

from infrafabric.protocol.keyring import Keyring
from infrafabric.server.auth import OPERATOR_SESSION_SECONDS, Sessions
from tests.server.conftest import Fabric


@contextlib.contextmanager
def signed_in(fabric: Fabric) -> Iterator[httpx.Client]:
    """A client holding the session cookie, as a browser after the login form."""
    with httpx.Client(base_url=fabric.url) as client:
        reply = client.post("/v1/dashboard/login", json={"token": fabric.admin})
        assert reply.status_code == 200
        yield client


def test_the_session_cookie_opens_reads_and_nothing_else(fabric: Fabric) -> None:
    with signed_in(fabric) as browser:
        assert "ifab_operator" in browser.cookies
        assert fabric.admin not in browser.cookies["ifab_operator"]
        assert browser.get("/v1/tasks").status_code == 200
        assert browser.get("/v1/governor/report").status_code == 200
        # changes still need the admin token itself: a forged cross-site POST gets nothing
        assert browser.post("/v1/admin/agents", json={}).status_code == 401
        assert browser.post("/v1/admin/governor/reload").status_code == 401
        assert browser.get("/metrics").status_code == 401
        browser.post("/v1/dashboard/logout")
        assert browser.get("/v1/tasks").status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"token": "wrong"}, 401, "UNAUTHENTICATED"),
        ({"password": "x"}, 400, "MALFORMED"),
        ("not json", 400, "MALFORMED"),
        # read whole before: anyone could make the server hold any amount (no token needed)
        ("x" * (8 * 1024 * 1024), 413, "TOO_LARGE"),
        ("[" * 100_000 + "]" * 100_000, 413, "TOO_LARGE"),
        ('{"token": ' + "[" * 3000 + "]" * 3000 + "}", 400, "MALFORMED"),
    ],
)
def test_a_bad_login_is_refused_with_a_reason(
    fabric: Fabric, body: object, status: int, code: str
) -> None:
    options = {"json": body} if isinstance(body, dict) else {"content": body}
    reply = httpx.post(f"{fabric.url}/v1/dashboard/login", **options)  # type: ignore[arg-type]
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code
    assert "set-cookie" not in reply.headers


def test_the_cookie_opens_the_websocket_only_from_this_servers_own_pages(fabric: Fabric) -> None:
    with signed_in(fabric) as browser:
        cookie = f"ifab_operator={browser.cookies['ifab_operator']}"
    ws_url = fabric.url.replace("http://", "ws://") + "/v1/ws"
    host = fabric.url.removeprefix("http://")

    async def opens(origin: str) -> tuple[int, str | None]:
        """101 if the WebSocket opened, else the HTTP status and reason code of the
        refusal."""
        headers = {"cookie": cookie, "origin": origin}
        try:
            async with websockets.asyncio.client.connect(
                ws_url, additional_headers=headers, origin=None
            ) as socket:
                await socket.send('{"type": "subscribe", "topics": ["if://topic/**"]}')
                return 101, None
        except websockets.exceptions.InvalidStatus as refused:  # refused before accepting
            body = json.loads(refused.response.body)
            return refused.response.status_code, body["error"]["code"]

    assert asyncio.run(opens(f"http://{host}")) == (101, None)
    assert asyncio.run(opens("http://evil.example")) == (401, "UNAUTHENTICATED")


def test_an_operator_session_expires_and_is_bound_to_the_admin_token() -> None:
    sessions = Sessions(Keyring(), "admin-token-1")
    session = sessions.operator_session(1000.0)
    assert sessions.is_operator_session(session, 1000.0 + OPERATOR_SESSION_SECONDS)
    assert not sessions.is_operator_session(session, 1000.0 + OPERATOR_SESSION_SECONDS + 1)
    assert not Sessions(Keyring(), "admin-token-2").is_operator_session(session, 1000.0)
    assert not sessions.is_operator_session(session[:-2] + "AA", 1000.0)
    assert not sessions.is_operator_session(None, 1000.0)
    assert sessions.agent_of(session, 1000.0) is None  # not an agent's token either
