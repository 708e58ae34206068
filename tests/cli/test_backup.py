"""`ifab backup` of a running server and `ifab restore` into a new data directory: the
restored fabric serves what was backed up, and its witness verifies; a changed archive
and a used directory are refused."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import signal
import tarfile
from pathlib import Path

import httpx

from infrafabric.client import Client
from tests.harness import Fabric, enroll, ok


def entries(verified: str) -> int:
    """How many entries `ifab witness verify` found sound."""
    match = re.match(r"ok: (\d+) entries agree", verified)
    assert match, verified
    return int(match.group(1))


def test_a_backup_of_a_running_server_restores_whole(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start()
    alice = enroll(fabric.url, fabric.admin_token, "alice")

    async def work(prefix: str) -> None:
        async with Client.connect(fabric.url, alice) as agent:
            for n in range(5):
                await agent.create_task(f"{prefix} {n}", id=f"{prefix}-{n}")
            await agent.claim(f"{prefix}-0")
            await agent.complete(f"{prefix}-0", {"ok": True})

    asyncio.run(work("before"))
    archive = tmp_path / "fabric.tar.gz"
    assert "backed up" in ok(fabric("backup", str(archive)))  # the server keeps running
    assert archive.stat().st_mode & 0o777 == 0o600
    asyncio.run(work("after"))  # not in the backup
    fabric.kill(signal.SIGKILL)

    restored = Fabric(tmp_path / "restored")
    assert "restored" in ok(restored("restore", str(archive)))
    before = entries(ok(restored("witness", "verify")))
    restored.start()
    try:
        headers = {"authorization": f"Bearer {fabric.admin_token}"}  # the same operator token
        tasks = httpx.get(f"{restored.url}/v1/tasks", headers=headers).json()["tasks"]
        assert sorted(t["id"] for t in tasks) == [f"before-{n}" for n in range(5)]
        assert next(t for t in tasks if t["id"] == "before-0")["state"] == "completed"

        async def goes_on() -> None:  # the same agent's key is trusted there
            async with Client.connect(restored.url, alice) as agent:
                await agent.claim("before-1")

        asyncio.run(goes_on())
    finally:
        restored.kill()
    assert entries(ok(restored("witness", "verify"))) > before  # it grew, still sound


def test_a_changed_archive_and_a_used_directory_are_refused(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start()
    enroll(fabric.url, fabric.admin_token, "alice")
    archive = tmp_path / "fabric.tar.gz"
    ok(fabric("backup", str(archive)))
    again = fabric("backup", str(archive))
    assert again.returncode == 1
    assert "exists" in again.stderr.decode()
    fabric.kill()

    used = fabric("restore", str(archive))  # into the live data directory: refused
    assert used.returncode == 1
    assert "not empty" in used.stderr.decode()

    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "r:gz") as source, tarfile.open(tampered, "w:gz") as target:
        for member in source:
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "admin.token":
                data = b"an operator token of the attacker's choosing\n"
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    refused = Fabric(tmp_path / "elsewhere")("restore", str(tampered))
    assert refused.returncode == 1
    assert "admin.token does not match the manifest" in refused.stderr.decode()
    assert not (tmp_path / "elsewhere" / "data").exists()  # nothing half restored

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(gzip.compress(b"not a tar file"))
    broken = Fabric(tmp_path / "third")("restore", str(garbage))
    assert broken.returncode == 1
    assert "not a readable backup" in broken.stderr.decode()
