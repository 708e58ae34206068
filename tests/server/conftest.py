"""A real fabric server on a free loopback port, and agents enrolled in it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infrafabric import Keyring, SigningIdentity, agent_id, new_key_record
from infrafabric.server.runner import RunningServer, open_server, run_server


@dataclass
class Fabric:
    server: RunningServer
    admin: str

    @property
    def url(self) -> str:
        return self.server.url

    def enroll(self, name: str, capabilities: tuple[str, ...] = ()) -> SigningIdentity:
        identity = SigningIdentity.generate(agent_id(name))
        record = new_key_record(
            identity.agent, identity.public_key, version=1, now=time.time() - 60
        )
        document = {
            "keys": {"format": "infrafabric-keyring/1", "keys": [_builtins(record)]},
            "capabilities": list(capabilities),
        }
        response = httpx.post(
            f"{self.url}/v1/admin/agents",
            json=document,
            headers={"authorization": f"Bearer {self.admin}"},
        )
        assert response.status_code == 200, response.text
        return identity

    def admin_get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"authorization": f"Bearer {self.admin}"})


def _builtins(record: object) -> object:
    import msgspec

    return msgspec.to_builtins(record)


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    state = open_server(tmp_path / "data", synchronous="NORMAL")
    with run_server(state) as server:
        yield Fabric(server, state.sessions.admin_token)


__all__ = ["Fabric", "Keyring"]
