"""A real fabric server on a free loopback port, and agents enrolled in it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infrafabric import Keyring, SigningIdentity
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


def _builtins(record: object) -> object:
    import msgspec

    return msgspec.to_builtins(record)


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    state = open_server(tmp_path / "data", synchronous="NORMAL")
    with run_server(state) as server:
        yield Fabric(server, state.sessions.admin_token)


__all__ = ["Fabric", "Keyring"]
