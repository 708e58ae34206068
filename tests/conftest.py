"""Shared fixtures: a fixed clock, identities, and a keyring that knows them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from infrafabric import (
    IFMessage,
    Keyring,
    KeyRole,
    Outbox,
    SigningIdentity,
    agent_id,
    build_message,
    new_key_record,
)
from infrafabric.protocol.timefmt import parse_timestamp
from tests.harness import Fabric, stop_leftovers

# No deadlines: speed is measured by `make bench`, never asserted in tests.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=5_000)
settings.load_profile(os.environ.get("IFAB_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session() -> Iterator[None]:
    """`ifab serve` processes of tests that failed before stopping them are stopped."""
    yield
    stop_leftovers()


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    """A real `ifab serve` process on a free loopback port, stopped after the test.
    (tests/server and tests/dashboard replace it with an in-process server of their own.)"""
    running = Fabric(tmp_path)
    running.start()
    yield running
    running.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real Redis for the session (see tests/redis_server.py); tests flush it."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return str(redis_server.url)


#: The instant every deterministic test runs at.
NOW = parse_timestamp("2026-11-23T12:00:00Z")


def plain_message(sender: str = "if://agent/alice", **fields: Any) -> IFMessage:
    """An unsigned ``inform`` from ``sender`` to bob with empty content, sequence 1, sent at
    NOW, unless ``fields`` (as for ``build_message``) say otherwise."""
    defaults: dict[str, Any] = {
        "performative": "inform",
        "receiver": "if://agent/bob",
        "content": {},
        "now": NOW,
        "sequence_num": 1,
    }
    return build_message(sender=sender, **{**defaults, **fields})


@pytest.fixture
def now() -> float:
    return NOW


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture
def make_agent(keyring: Keyring) -> Callable[..., Outbox]:
    """Create an identity named ``name``, trust it in ``keyring``, return its outbox."""

    def make(name: str, *, role: KeyRole = KeyRole.AGENT, trusted: bool = True) -> Outbox:
        identity = SigningIdentity.generate(agent_id(name))
        if trusted:
            keyring.add(
                new_key_record(
                    identity.agent, identity.public_key, version=1, now=NOW - 86_400, role=role
                )
            )
        return Outbox(identity)

    return make
