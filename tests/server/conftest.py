"""A real fabric server on a free loopback port, and agents enrolled in it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infrafabric import Keyring, SigningIdentity
from infrafabric.client import Client
from infrafabric.server.app import ServerState
from infrafabric.server.runner import RunningServer, open_server, run_server
from tests.harness import enroll


@dataclass
class Fabric:
    server: RunningServer
    admin: str

    @property
    def url(self) -> str:
        return self.server.url

    def enroll(self, name: str, capabilities: tuple[str, ...] = ()) -> SigningIdentity:
        return enroll(self.url, self.admin, name, capabilities=list(capabilities))

    def admin_get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"authorization": f"Bearer {self.admin}"})


async def token_of(fabric: Fabric, client: Client) -> str:
    """The session token ``client`` holds (signing in first if it has none)."""
    await client._ensure_token()
    assert client._token is not None
    return client._token


def _builtins(record: object) -> object:
    import msgspec

    return msgspec.to_builtins(record)


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    state = open_server(tmp_path / "data", synchronous="NORMAL")
    with run_server(state) as server:
        yield Fabric(server, state.sessions.admin_token)


@pytest.fixture
def small_queues(tmp_path: Path) -> Iterator[tuple[Fabric, ServerState]]:
    """A real server whose connections queue 20 frames at most (the default is 1,000), so
    a test overflows one quickly; with its state, to look at the hub."""
    state = open_server(tmp_path / "data", synchronous="NORMAL")
    state.queue_limit = 20
    with run_server(state) as server:
        yield Fabric(server, state.sessions.admin_token), state


__all__ = ["Fabric", "Keyring"]
