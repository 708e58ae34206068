"""``ifab backup`` and ``ifab restore``: a whole data directory in one archive, taken while
the server runs.

A backup is a gzip-compressed tar of the data directory's parts with a manifest first::

    manifest.json       {"format": "infrafabric-backup/1", "created_at": ..., "files":
                         {"board.db": "<sha256>", ...}, "witness_size": N}
    board.db            the board, inboxes, governor books (a consistent snapshot)
    witness.db          the witness log (a consistent snapshot, taken first)
    keys/...            the fabric's sealed signing key
    keyring/...         the enrolled agents' keys
    admin.token, witness.passphrase   (when present: secrets, as in the data directory)

The databases are copied with SQLite's online backup API, so a running server is not
stopped. The witness is copied *before* the board: it only ever lags the board, so the
restored board holds every event the restored witness took, and the witness catches up
on the rest when the server starts. An archive holds the fabric's secrets: it is written
mode 0600 and never over an existing file. A fabric over Redis keeps its board in Redis:
back that up with Redis's own persistence; this covers the data directory alone.

Restoring checks every file against the manifest (and nothing outside it is taken),
refuses a data directory that is not empty, and runs SQLite's integrity check on both
databases before anything is moved into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Final

from infrafabric.errors import CallerError, FabricError

__all__ = ["FORMAT", "BackupError", "backup", "restore"]

FORMAT: Final = "infrafabric-backup/1"
#: Copied in this order (see the module's docstring: the witness first).
DATABASES: Final = ("witness.db", "board.db")
SECRETS: Final = ("admin.token", "witness.passphrase")
DIRECTORIES: Final = ("keys", "keyring")
MANIFEST: Final = "manifest.json"
#: The largest manifest read (a guard against a crafted archive).
MAX_MANIFEST: Final = 1024 * 1024


class BackupError(FabricError):
    """A backup that cannot be made, or an archive that cannot be restored; says why."""


def backup(data_dir: Path, archive: Path) -> dict[str, Any]:
    """Write the archive of ``data_dir`` to ``archive`` (which must not exist); returns
    the manifest."""
    if not (data_dir / "board.db").exists():
        raise BackupError(f"{data_dir} holds no fabric (no board.db)")
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch)
        for name in DATABASES:
            if (data_dir / name).exists():
                _snapshot(data_dir / name, staged / name)
        for name in SECRETS:
            if (data_dir / name).exists():
                shutil.copy2(data_dir / name, staged / name)
        for name in DIRECTORIES:
            if (data_dir / name).is_dir():
                shutil.copytree(
                    data_dir / name, staged / name, ignore=shutil.ignore_patterns(".lock")
                )
        files = {path: _sha256(staged / path) for path in _files(staged)}
        manifest = {
            "format": FORMAT,
            "created_at": time.time(),
            "files": files,
            "witness_size": _witness_size(staged / "witness.db"),
        }
        try:
            fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise BackupError(f"{archive} exists: choose a new name") from None
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(body), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(body))
            for path in sorted(files):
                tar.add(staged / path, arcname=path, recursive=False)
    return manifest


def restore(archive: Path, data_dir: Path) -> dict[str, Any]:
    """Unpack ``archive`` into ``data_dir`` (absent or empty) after checking it whole;
    returns its manifest. Raises :class:`BackupError` naming what is wrong."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore into a new data directory")
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist")
    try:
        with (
            tarfile.open(archive, mode="r:gz") as tar,
            tempfile.TemporaryDirectory(dir=_parent(data_dir)) as scratch,
        ):
            staged = Path(scratch) / "data"
            manifest = _unpack(tar, staged)
            for name in DATABASES:
                if (staged / name).exists():
                    _check_integrity(staged / name)
            if data_dir.exists():
                data_dir.rmdir()  # empty, checked above
            staged.rename(data_dir)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BackupError(f"{archive} is not a readable backup: {exc}") from None
    return manifest


def _unpack(tar: tarfile.TarFile, staged: Path) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST:
        raise BackupError("the archive does not start with its manifest")
    handle = tar.extractfile(first)
    assert handle is not None
    try:
        manifest = json.loads(handle.read())
    except ValueError:
        raise BackupError("the manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"not an {FORMAT} archive")
    files: dict[str, str] = manifest.get("files") or {}
    if not files or "board.db" not in files:
        raise BackupError("the manifest lists no board.db")
    staged.mkdir(mode=0o700)
    seen: set[str] = set()
    while (member := tar.next()) is not None:  # (iterating would start over)
        name = member.name
        if name not in files or name in seen or not member.isfile() or not _safe(name):
            raise BackupError(f"the archive holds {name!r}, which its manifest does not list")
        target = staged / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        with source, open(target, "xb") as out:
            shutil.copyfileobj(source, out)
        os.chmod(target, 0o600)
        if _sha256(target) != files[name]:
            raise BackupError(f"{name} does not match the manifest: the archive was changed")
        seen.add(name)
    missing = sorted(set(files) - seen)
    if missing:
        raise BackupError(f"the archive lacks {', '.join(missing)}")
    return manifest


def _snapshot(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its writers are not stopped)."""
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as reader:
            with sqlite3.connect(target) as writer:
                reader.backup(writer)
            writer.close()
        reader.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: {exc}") from None


def _check_integrity(path: Path) -> None:
    with sqlite3.connect(path) as db:
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    if result != "ok":
        raise BackupError(f"{path.name} fails SQLite's integrity check: {result}")


def _witness_size(path: Path) -> int | None:
    if not path.exists():
        return None
    with sqlite3.connect(path) as db:
        try:
            row = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        except sqlite3.Error:
            row = None
    db.close()
    return None if row is None else int(row[0])


def _files(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix()


def _safe(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and name == path.as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parent(data_dir: Path) -> Path:
    """Where to stage a restore: beside its destination, so the final move is a rename."""
    parent = data_dir.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise CallerError(f"{parent}: {exc.strerror}") from None
    return parent
