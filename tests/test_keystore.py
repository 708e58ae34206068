"""The keystore: encrypted at rest, private file modes, durable sequence numbers, rotation."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from infrafabric import (
    IdentityExists,
    IdentityNotFound,
    KdfCost,
    KeyRole,
    KeyState,
    Keystore,
    KeystoreCorrupt,
    RotationKind,
    Verifier,
    WrongPassphrase,
    encode_json,
)
from infrafabric.errors import CallerError
from infrafabric.keystore import default_home, load_keyring_dir, write_private
from infrafabric.protocol.identity import b64url_encode
from tests.conftest import NOW

FAST = KdfCost(iterations=1, lanes=1, memory_kib=8 * 1024)  # tests only; see test_default_kdf_cost
PASS = "correct horse battery staple"


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "home", kdf=FAST)


def test_create_then_unlock(store: Keystore) -> None:
    created = store.create("alice", PASS, now=NOW)
    unlocked = store.unlock("alice", PASS)
    assert unlocked.kid == created.kid
    assert unlocked.agent == "if://agent/alice"
    assert store.names() == ["alice"]
    record = store.load_keyring().active("if://agent/alice")
    assert record is not None
    assert record.kid == created.kid


def test_files_are_private_and_hold_no_plaintext_key(store: Keystore) -> None:
    identity = store.create("alice", PASS, now=NOW)
    for directory in (store.home, store.home / "identities", store.home / "keyring"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for path in directory.iterdir():
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    text = (store.identities_dir / "alice.json").read_text()
    assert identity.seed.hex() not in text
    assert b64url_encode(identity.seed) not in text
    assert json.loads(text)["sealed"]["kdf"]["alg"] == "argon2id"


def test_wrong_passphrase(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    with pytest.raises(WrongPassphrase) as caught:
        store.unlock("alice", "guess")
    assert caught.value.name == "alice"


def test_tampered_ciphertext_does_not_open(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    path = store.identities_dir / "alice.json"
    document = json.loads(path.read_text())
    sealed = document["sealed"]["ciphertext"]
    document["sealed"]["ciphertext"] = ("B" if sealed[0] == "A" else "A") + sealed[1:]
    path.write_text(json.dumps(document))
    with pytest.raises(WrongPassphrase):
        store.unlock("alice", PASS)


def test_a_sealed_key_cannot_be_moved_to_another_identity(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    store.create("bob", PASS, now=NOW)
    alice = json.loads((store.identities_dir / "alice.json").read_text())
    bob = json.loads((store.identities_dir / "bob.json").read_text())
    bob["sealed"] = alice["sealed"]  # associated data binds the seed to agent and kid
    (store.identities_dir / "bob.json").write_text(json.dumps(bob))
    with pytest.raises(WrongPassphrase):
        store.unlock("bob", PASS)


def test_names_and_passphrases_are_checked(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    with pytest.raises(IdentityExists):
        store.create("alice", PASS, now=NOW)
    with pytest.raises(IdentityNotFound):
        store.unlock("nobody", PASS)
    with pytest.raises(CallerError):
        store.create("../escape", PASS, now=NOW)
    with pytest.raises(CallerError, match="empty passphrase"):
        store.create("carol", "", now=NOW)


def test_corrupt_files_are_named(store: Keystore) -> None:
    store.identities_dir.mkdir(parents=True)
    (store.identities_dir / "broken.json").write_text("{not json")
    with pytest.raises(KeystoreCorrupt, match=r"broken\.json"):
        store.info("broken")
    store.keyring_dir.mkdir(parents=True)
    (store.keyring_dir / "junk.json").write_text('{"format": "something-else/9", "keys": []}')
    with pytest.raises(KeystoreCorrupt, match=r"junk\.json"):
        load_keyring_dir(store.keyring_dir)


def test_default_kdf_cost_is_rfc9106_second_recommendation(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    assert store.kdf == KdfCost(iterations=3, lanes=4, memory_kib=65536)
    store.create("alice", PASS, now=NOW)
    kdf = json.loads((store.identities_dir / "alice.json").read_text())["sealed"]["kdf"]
    assert (kdf["iterations"], kdf["lanes"], kdf["memory_kib"]) == (3, 4, 65536)
    assert store.unlock("alice", PASS).agent == "if://agent/alice"


def test_home_comes_from_ifab_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IFAB_HOME", str(tmp_path / "custom"))
    assert default_home() == tmp_path / "custom"
    assert Keystore().home == tmp_path / "custom"


def test_sequence_numbers_rise(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    assert store.reserve_sequence("alice") == 1
    assert store.reserve_sequence("alice", 10) == 2
    assert store.reserve_sequence("alice") == 12


def _reserve_many(home: str) -> list[int]:
    store = Keystore(home, kdf=FAST)
    return [store.reserve_sequence("alice") for _ in range(40)]


def test_concurrent_processes_never_share_a_number(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    with ProcessPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_reserve_many, [str(store.home)] * 4))
    numbers = [n for batch in results for n in batch]
    assert sorted(numbers) == list(range(1, 161))


def test_acknowledged_sequence_numbers_survive_kill_9(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    worker = textwrap.dedent(
        f"""
        import sys
        from infrafabric import Keystore, KdfCost
        store = Keystore({str(store.home)!r}, kdf=KdfCost(1, 1, 8192))
        while True:
            print(store.reserve_sequence("alice"), flush=True)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        acknowledged = [int(process.stdout.readline()) for _ in range(200)]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    assert store.reserve_sequence("alice") > max(acknowledged)


def test_scheduled_rotation(store: Keystore) -> None:
    old = store.create("alice", PASS, now=NOW)
    announcement = store.rotate("alice", PASS, now=NOW + 100)
    new = store.unlock("alice", PASS)
    assert new.version == 2
    assert new.kid != old.kid
    keyring = store.load_keyring()
    assert keyring.get(old.kid).state is KeyState.DEPRECATED  # type: ignore[union-attr]
    assert keyring.active("if://agent/alice").kid == new.kid  # type: ignore[union-attr]
    assert Verifier(keyring).check(encode_json(announcement), now=NOW + 100).ok


def test_emergency_rotation(store: Keystore) -> None:
    old = store.create("alice", PASS, now=NOW)
    store.rotate("alice", PASS, now=NOW, kind=RotationKind.EMERGENCY)
    assert store.load_keyring().get(old.kid).state is KeyState.REVOKED  # type: ignore[union-attr]


def test_compromised_rotation_needs_an_operator(store: Keystore) -> None:
    old = store.create("alice", PASS, now=NOW)
    store.create("ops", PASS, now=NOW, role=KeyRole.OPERATOR)
    with pytest.raises(CallerError, match="operator"):
        store.rotate("alice", PASS, now=NOW, kind=RotationKind.COMPROMISED)
    operator = store.unlock("ops", PASS)
    store.rotate("alice", PASS, now=NOW, kind=RotationKind.COMPROMISED, operator=operator)
    assert store.load_keyring().get(old.kid).state is KeyState.COMPROMISED  # type: ignore[union-attr]


def test_a_rotation_lost_from_the_keyring_files_is_reapplied(store: Keystore) -> None:
    old = store.create("alice", PASS, now=NOW)
    before = (store.keyring_dir / "alice.json").read_bytes()
    store.rotate("alice", PASS, now=NOW)
    (store.keyring_dir / "alice.json").write_bytes(before)  # as if we crashed before writing it
    keyring = store.load_keyring()
    assert keyring.get(old.kid).state is KeyState.DEPRECATED  # type: ignore[union-attr]
    assert keyring.active("if://agent/alice").version == 2  # type: ignore[union-attr]


def test_wrong_passphrase_cannot_rotate(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    with pytest.raises(WrongPassphrase):
        store.rotate("alice", "guess", now=NOW)
    assert store.unlock("alice", PASS).version == 1


def test_a_key_lost_from_the_keyring_files_is_restored(store: Keystore) -> None:
    identity = store.create("alice", PASS, now=NOW)
    (store.keyring_dir / "alice.json").unlink()  # as if we crashed before writing it
    record = store.load_keyring().active("if://agent/alice")
    assert record is not None
    assert record.kid == identity.kid


def test_an_identity_file_copied_over_another_is_refused(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    store.create("bob", PASS, now=NOW)
    (store.identities_dir / "alice.json").write_bytes(
        (store.identities_dir / "bob.json").read_bytes()
    )
    with pytest.raises(KeystoreCorrupt, match="not 'alice'"):
        store.unlock("alice", PASS)


def test_an_absurd_kdf_cost_in_a_file_is_refused_before_running(store: Keystore) -> None:
    store.create("alice", PASS, now=NOW)
    path = store.identities_dir / "alice.json"
    document = json.loads(path.read_text())
    document["sealed"]["kdf"]["memory_kib"] = 4 * 1024 * 1024  # 4 GiB
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreCorrupt, match="1 GiB"):
        store.unlock("alice", PASS)


def _create_alice(home: str) -> str:
    try:
        Keystore(home, kdf=FAST).create("alice", PASS, now=NOW)
    except IdentityExists:
        return "exists"
    return "created"


def test_racing_creators_make_one_identity(store: Keystore) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(_create_alice, [str(store.home)] * 8))
    assert outcomes.count("created") == 1
    assert outcomes.count("exists") == 7
    assert len(store.load_keyring().for_agent("if://agent/alice")) == 1


def test_a_private_file_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write may take fewer bytes than asked (a disk filling up): the rest was dropped
    and the short file renamed over the good one (an identity's seed lost). A write
    that fails leaves the old file, and no temporary beside it."""
    path = tmp_path / "secret"
    write_private(path, b"old contents\n")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    write_private(path, b"0123456789" * 10)
    assert path.read_bytes() == b"0123456789" * 10

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_private(path, b"new contents that never fit\n")
    assert path.read_bytes() == b"0123456789" * 10
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
