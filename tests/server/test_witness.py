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

import pytest

from infrafabric.client import Client, RemoteError
from infrafabric.witness import bundle as bundle_module
from infrafabric.witness.bundle import BundleError, verify_bundle
from infrafabric.witness.checkpoint import open_checkpoint
from infrafabric.witness.merkle import verify_consistency
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
            first = await _signed_at_least(agent, 4)
            await agent.claim("a")
            await agent.complete("a", {"ok": True})
            latest = await _signed_at_least(agent, 6)
            entries = await agent.witness_entries(0, 10)
            assert [
                (e["entry"]["component"], e["entry"]["event"], e["entry"].get("task_id"))
                for e in entries
            ] == [
                ("keys", "key.added", None),  # the enrollment, in one transaction
                ("keys", "agent.enrolled", None),
                ("board", "task.created", "a"),
                ("board", "task.created", "b"),
                ("board", "task.claimed", "a"),
                ("board", "task.completed", "a"),
            ]
            assert entries[0]["entry"]["payload"]["agent"] == alice.agent
            assert entries[4]["entry"]["actor"] == alice.agent
            assert [e["entry"]["source"]["board_event"] for e in entries] == [1, 2, 3, 4, 5, 6]
            by_index = await agent.witness_proof(4)
            by_hash = await agent.witness_proof(leaf=bytes.fromhex(entries[4]["leaf"]))
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
