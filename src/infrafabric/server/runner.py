"""Opening a fabric's data directory and running the server over it.

A data directory holds (files 0600, created on first start)::

    board.db        the SQLite store: tasks, events, inboxes, agents
    witness.db      the witness log: Merkle tree of every board decision, checkpoints
    keys/           the fabric's own key (it signs witness checkpoints), sealed with
                    $IFAB_WITNESS_PASSPHRASE or, if unset, with witness.passphrase
    keyring/        public keys of enrolled agents (keyring documents)
    admin.token     the operator's token (or set IFAB_ADMIN_TOKEN)
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import nacl.signing
import platformdirs
import uvicorn

from infrafabric.board.rules import DEFAULT_CONFIG, BoardConfig
from infrafabric.coordinator import Coordinator
from infrafabric.errors import CallerError
from infrafabric.governor.driver import GovernorDriver
from infrafabric.governor.policy import DEFAULT_POLICY
from infrafabric.keystore import Keystore, load_keyring_dir, write_private
from infrafabric.outage import Outage
from infrafabric.protocol.identity import SigningIdentity
from infrafabric.protocol.verify import Mode, Verifier
from infrafabric.server.app import MAX_FRAME_BYTES, ServerState, create_app
from infrafabric.server.auth import Sessions
from infrafabric.service import FabricService
from infrafabric.storage.sqlite import CHECKPOINT_SECONDS, SqliteStore
from infrafabric.witness.feeder import Witness, WitnessFeeder, WitnessProcess
from infrafabric.witness.log import WitnessLog

if TYPE_CHECKING:
    from infrafabric.storage.redis import RedisStore

__all__ = [
    "ENV_ADMIN_TOKEN",
    "ENV_DATA",
    "ENV_STORE",
    "RunningServer",
    "default_data_dir",
    "given_admin_token",
    "header_safe",
    "open_server",
    "run_server",
]

ENV_DATA: Final = "IFAB_DATA"
ENV_STORE: Final = "IFAB_STORE"
ENV_ADMIN_TOKEN: Final = "IFAB_ADMIN_TOKEN"  # noqa: S105 - the variable's name
ENV_WITNESS_PASSPHRASE: Final = "IFAB_WITNESS_PASSPHRASE"  # noqa: S105 - the variable's name
FABRIC_IDENTITY: Final = "fabric"
SWEEP_SECONDS: Final = 1.0
_log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """``$IFAB_DATA``, else the user's data directory for ``infrafabric``."""
    configured = os.environ.get(ENV_DATA)
    return Path(configured) if configured else platformdirs.user_data_path("infrafabric") / "fabric"


def open_server(
    data_dir: Path,
    *,
    config: BoardConfig = DEFAULT_CONFIG,
    synchronous: str = "FULL",
    witness: bool = True,
    witness_process: bool = False,
    verify_mode: Mode = Mode.STRICT,
    governor: bool = True,
    policy: Path | None = None,
    profile: str | None = None,
    store_url: str | None = None,
    background_checkpoints: bool = True,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> ServerState:
    """Open (creating if needed) the data directory and build the server's state
    (``witness=False``: keep no witness log, for measuring what it costs;
    ``witness_process``: feed it from a child process rather than a thread, as
    ``ifab serve`` does, so it does not share the server's GIL; ``verify_mode``
    ``audit``: accept every message that parses and witness each failed check;
    ``governor``: assign work and enforce budgets under ``policy``, a YAML file, or the
    built-in policy, with ``profile`` instead of the file's own; a policy that does not
    load raises :class:`~infrafabric.governor.policy.PolicyError`; ``store_url``
    ``redis://...``: keep the board, inboxes and witness log in that Redis, shared with
    every other server given the same URL, instead of ``board.db``; an unreachable Redis
    raises :class:`~infrafabric.errors.StoreUnavailable`; ``background_checkpoints``:
    copy ``board.db``'s WAL into the database from a thread, see
    :meth:`~infrafabric.storage.sqlite.SqliteStore._start_checkpointer`, rather than in
    the commit that fills it past 1,000 pages, every ``checkpoint_seconds``)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store: SqliteStore | RedisStore
    release = None
    if store_url is None:
        release = _lock_data_dir(data_dir)
        store = SqliteStore(
            data_dir / "board.db",
            synchronous="NORMAL" if synchronous == "NORMAL" else "FULL",
            background_checkpoints=background_checkpoints,
            checkpoint_seconds=checkpoint_seconds,
        )
    else:
        store = open_store_url(store_url)
    shared = None if isinstance(store, SqliteStore) else store
    keyring_dir = data_dir / "keyring"
    keyring = load_keyring_dir(keyring_dir)
    coordinator = Coordinator(store, config=config)
    verifier = Verifier(keyring, mode=verify_mode)
    # Whose nonces this verifier never saw (see Verdict.highest): any message accepted
    # before now was dated at most the clock skew after it, by its sender's clock.
    unknown_until = time.time() + verifier.clock_skew
    for sender, highest, seen in store.sequences():  # what was accepted before a restart
        verifier.sequences.restore(sender, highest, seen)
        verifier.nonces.unknown_before(sender, unknown_until)
    driver = None
    if governor:
        if policy is not None:
            driver = GovernorDriver.from_file(coordinator, policy, profile)
        else:
            chosen = DEFAULT_POLICY if profile is None else DEFAULT_POLICY.with_profile(profile)
            driver = GovernorDriver(coordinator, chosen, profile=profile)
    service = FabricService(coordinator, verifier, driver)
    relay = None
    if shared is not None:
        from infrafabric.server.relay import Relay  # (redis-py: imported only if used)

        service.load_shared_keys()  # what the other servers enrolled
        relay = Relay(shared, on_keys=service.load_shared_keys)
    used_once = None
    if shared is not None:  # a challenge answered to any server is spent for all of them
        store_nonce = shared.claim_nonce

        def used_once(challenge: str, until: float, now: float) -> bool:
            return store_nonce("auth", challenge, until - now)

    sessions = Sessions(keyring, _admin_token(data_dir), used_once=used_once)
    feeder: Witness | None = None
    if witness:
        identity = _fabric_identity(data_dir)
        key, name = nacl.signing.SigningKey(identity.seed), f"infrafabric.witness/{identity.kid}"
        # The witness log is NORMAL whatever the board's setting: every entry is derived,
        # byte for byte, from the board's durable event log (time, index and all), so
        # commits lost to a power cut are appended again, identically, from the cursor,
        # and agree with any checkpoint already published. No fsync per round, then.
        if shared is not None:  # one log for all servers; one of them feeds it
            from infrafabric.witness.redis_log import APPEND_MOST, RedisWitnessLog

            # (small appends: Redis runs each alone, and every claim waits for it)
            shared_log = RedisWitnessLog(shared)
            feeder = WitnessFeeder(shared_log, shared, key, name, batch=APPEND_MOST)
        elif witness_process and isinstance(store, SqliteStore):
            feeder = WitnessProcess(store.path, data_dir / "witness.db", "NORMAL", key, name)
        else:
            log = WitnessLog(data_dir / "witness.db", synchronous="NORMAL")
            feeder = WitnessFeeder(log, store, key, name)
        if isinstance(store, SqliteStore):
            # the board keeps what the witness has not read yet (up to a limit)
            reader: Witness = feeder
            store.keep_events_after = lambda: reader.witnessed
    return ServerState(
        service=service,
        sessions=sessions,
        keyring=keyring,
        keyring_dir=keyring_dir,
        witness=feeder,
        relay=relay,
        release=release,
    )


def _lock_data_dir(data_dir: Path) -> Callable[[], None]:
    """Hold ``data_dir`` for this process; returns how to let go. Two processes over one
    SQLite fabric would each feed the witness and keep replay windows of their own, so
    the second is refused at once (the kernel lets go of a killed process's lock)."""
    fd = os.open(data_dir / "fabric.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CallerError(
            f"{data_dir} is in use by another fabric process (a server, `ifab mcp` or a swarm); "
            "connect to that server with --server, or use another data directory"
        ) from None

    def release() -> None:
        os.close(fd)  # closing the descriptor lets go of the lock

    return release


def open_store_url(url: str) -> RedisStore:
    """The shared store named by ``url`` (``redis://`` or ``rediss://``)."""
    from infrafabric.storage.redis import RedisStore, redacted

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise CallerError(f"--store {redacted(url)}: expected redis://host:port/db")
    return RedisStore(url)


#: The shortest secret a data directory's admin.token or witness.passphrase may hold.
MIN_SECRET_CHARS: Final = 16


def _fabric_identity(data_dir: Path) -> SigningIdentity:
    """The fabric's own key, sealed in ``keys/`` like any identity (Argon2id and
    ChaCha20-Poly1305). The passphrase is ``$IFAB_WITNESS_PASSPHRASE``; without it one is
    made on first start and kept in ``witness.passphrase`` (0600), which protects the key
    only as well as the data directory's permissions do: set the variable in production."""
    keystore = Keystore(data_dir / "keys")
    passphrase = os.environ.get(ENV_WITNESS_PASSPHRASE) or _local_secret(
        data_dir / "witness.passphrase"
    )
    if FABRIC_IDENTITY not in keystore.names():
        return keystore.create(FABRIC_IDENTITY, passphrase, now=time.time())
    return keystore.unlock(FABRIC_IDENTITY, passphrase)


def _local_secret(path: Path) -> str:
    """The secret kept in ``path``, made (random, 256 bits, file mode 0600) if missing.

    Written whole or not at all (a temporary file, flushed, then linked into place): a
    crash or a full disk while it was written once left an empty file, and an empty
    operator token made every session token and dashboard session forgeable. A file
    too short to hold a secret is refused rather than used."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        try:
            write_private(path, (secret + "\n").encode("ascii"), exclusive=True)
        except FileExistsError:  # another process made it a moment ago: use that one
            return _local_secret(path)
        return secret
    if len(secret) < MIN_SECRET_CHARS:
        raise CallerError(
            f"{path} holds {len(secret)} characters, too few for a secret (at least"
            f" {MIN_SECRET_CHARS}); if nobody set it, delete it and a new one is made"
            " (what the old one opened stops working)"
        )
    return secret


def _admin_token(data_dir: Path) -> str:
    return given_admin_token() or _local_secret(data_dir / "admin.token")


def given_admin_token() -> str | None:
    """The operator token ``$IFAB_ADMIN_TOKEN`` gives, if any (empty counts as unset:
    the data directory's ``admin.token`` is used then). :class:`CallerError` if it is not
    printable ASCII: it travels in an HTTP header, which no client could send it in."""
    token = os.environ.get(ENV_ADMIN_TOKEN) or None
    return None if token is None else header_safe(token, f"${ENV_ADMIN_TOKEN}")


def header_safe(token: str, what: str) -> str:
    """``token``, if it can travel in an HTTP header (printable ASCII); else
    :class:`CallerError` naming ``what`` it came from."""
    if not (token.isascii() and token.isprintable()):
        raise CallerError(f"{what} must be printable ASCII (it is sent in a header)")
    return token


@dataclass
class RunningServer:
    state: ServerState
    url: str
    server: uvicorn.Server


@contextmanager
def run_server(
    state: ServerState, *, host: str = "127.0.0.1", port: int = 0, own_logging: bool = False
) -> Iterator[RunningServer]:
    """Run the server in a background thread until the block ends (port 0: any free one),
    then close ``state``. ``own_logging``: uvicorn's loggers go through the handlers
    already configured (:func:`infrafabric.logs.configure`) instead of its own.

    A sweeper thread returns expired leases and escalates long blockers every second.
    """
    config = uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        log_level="warning",
        log_config=None if own_logging else uvicorn.config.LOGGING_CONFIG,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        ws_max_size=MAX_FRAME_BYTES,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ifab-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    stop = threading.Event()
    sweeper = threading.Thread(target=_sweep, args=(state, stop), name="ifab-sweeper", daemon=True)
    sweeper.start()
    if state.witness is not None:
        state.witness.start()
    try:
        yield RunningServer(state, f"http://{host}:{bound}", server)
    finally:
        stop.set()
        server.should_exit = True
        thread.join(timeout=10)
        sweeper.join(timeout=10)
        state.close()


def _sweep(state: ServerState, stop: threading.Event) -> None:
    sweep_until(stop, state.service.coordinator, SWEEP_SECONDS)


def sweep_until(stop: threading.Event, coordinator: Coordinator, every: float) -> None:
    """Return expired leases every ``every`` seconds until ``stop``. A sweep that fails
    (the store unreachable for a while) is logged and tried again: the sweeper must
    outlive an outage, or the leases of tasks lost in it would never run out."""
    outage = Outage(_log, "lease sweep")
    while not stop.wait(every):
        try:
            coordinator.sweep()
            coordinator.share_seen()  # (over Redis: agents' health for the other servers)
            outage.ended()
        except Exception:
            outage.failed()
