"""A real `ifab serve` process on a free loopback port, for tests that need one."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from infrafabric import IFMessage, KeyRole, SigningIdentity, agent_id, build_message, new_key_record
from infrafabric.keystore import KdfCost, Keystore

IFAB = shutil.which("ifab", path=str(Path(sys.executable).parent))
PASS = "board cli passphrase"
#: Servers started and not yet stopped: a test that fails before its `kill` would leave
#: its server running after the session; `stop_leftovers` (a session fixture) stops them.
RUNNING: set[subprocess.Popen[bytes]] = set()


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Stop a process a test started (``sig`` unless it ended already), wait for it,
    close its pipes and forget it; returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
    code = process.wait(timeout=20)
    RUNNING.discard(process)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return code


def stop_leftovers() -> None:
    for process in list(RUNNING):
        stop(process, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Fabric:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.home = tmp / "home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("IFAB_")}
        environment.update(
            IFAB_HOME=str(self.home),
            IFAB_DATA=str(self.data),
            IFAB_PASSPHRASE=PASS,
            IFAB_SERVER=self.url,
        )
        return environment

    def start(self, *options: str) -> None:
        assert IFAB is not None
        self.process = subprocess.Popen(
            [IFAB, "serve", "--port", str(self.port), "--synchronous", "NORMAL", *options],
            env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        RUNNING.add(self.process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/health").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("ifab serve did not come up")

    @property
    def admin_token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def kill(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        stop(self.process, sig)

    def __call__(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        assert IFAB is not None
        return subprocess.run(
            [IFAB, *args], input=stdin, capture_output=True, env=self.env(), timeout=60, check=False,
            start_new_session=True,
        )  # fmt: skip


#: Argon2id at its floor: the tests unlock identities many times; the cost is not the point.
CHEAP_KDF = KdfCost(iterations=1, lanes=1, memory_kib=8)


def local_agent(fabric: Fabric, name: str, *capabilities: str) -> None:
    """A local identity ``name`` in ``fabric``'s keystore (sealed with a cheap KDF: each
    `ifab` command unlocks it), enrolled with ``capabilities`` as `ifab agent enroll` does."""
    store = Keystore(fabric.home, kdf=CHEAP_KDF)
    identity = store.create(name, PASS, now=time.time() - 60)
    keys = msgspec.to_builtins(store.load_keyring().to_file(identity.agent))
    response = httpx.post(
        f"{fabric.url}/v1/admin/agents",
        json={"keys": keys, "capabilities": list(capabilities)},
        headers={"authorization": f"Bearer {fabric.admin_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    """The output of a command that must have succeeded (else its stderr, as the failure)."""
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def enrollment(
    name: str, *, role: KeyRole = KeyRole.AGENT, **manifest: Any
) -> tuple[SigningIdentity, dict[str, Any]]:
    """A fresh identity named ``name`` and the document that enrolls it through
    ``POST /v1/admin/agents``: its key (valid since a minute ago) and ``manifest``
    (capabilities, model, price...)."""
    identity = SigningIdentity.generate(agent_id(name))
    record = new_key_record(
        identity.agent, identity.public_key, version=1, now=time.time() - 60, role=role
    )
    keys = {"format": "infrafabric-keyring/1", "keys": [msgspec.to_builtins(record)]}
    return identity, {"keys": keys, **manifest}


def enroll(url: str, admin_token: str, name: str, **manifest: Any) -> SigningIdentity:
    """Enroll a fresh identity named ``name`` in the fabric at ``url``."""
    identity, document = enrollment(name, **manifest)
    response = httpx.post(
        f"{url}/v1/admin/agents",
        json=document,
        headers={"authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return identity


def signed_request(
    identity: SigningIdentity, receiver: str, content: dict[str, Any], *, sequence_num: int = 1
) -> IFMessage:
    """A request from ``identity`` to ``receiver``, signed now, with a known sequence
    number (tests that alter the signed bytes, or send them twice, need to know them)."""
    return identity.sign(
        build_message(
            sender=identity.agent,
            sequence_num=sequence_num,
            now=time.time(),
            performative="request",
            receiver=receiver,
            content=content,
        )
    )
