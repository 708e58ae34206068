"""The witness feeder: board events in, Merkle log entries and signed checkpoints out.

The board records each decision in its event log in the same transaction as the
decision; the feeder reads that log from where the witness log's cursor says, appends
the entries in one transaction with the new cursor (group commit: a round takes every
event waiting, up to ``batch``), and signs a checkpoint once a second while entries
arrive. Claims never wait for it; after a crash it resumes from the cursor, so no
acknowledged decision is left out and none is witnessed twice.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec
import nacl.signing

from infrafabric import ioprio
from infrafabric.errors import StoreError
from infrafabric.outage import Outage
from infrafabric.protocol.timefmt import format_timestamp
from infrafabric.storage.base import Store
from infrafabric.types import Timestamp
from infrafabric.witness.checkpoint import Checkpoint, sign_checkpoint, verifier_key
from infrafabric.witness.entry import (
    WitnessEntry,
    decode_entry,
    encode_entry,
    entry_of_board_event,
)
from infrafabric.witness.log import MerkleLog, WitnessLog

__all__ = ["BOARD_SOURCE", "Witness", "WitnessFeeder", "WitnessProcess"]

BOARD_SOURCE: Final = "board-events"
_log = logging.getLogger(__name__)
#: The witness process's rounds. Each round is one transaction, and SQLite writes every
#: page it touches to the WAL (and again at the checkpoint): rounds of 100 entries
#: write about 2.5 KB an entry, rounds of 20 about 4.7 KB (at 300,000 entries); the
#: append of a round of 100 takes about 1.5 ms of CPU, at a lower priority than claims.
CHILD_INTERVAL: Final = 0.1
#: How long closing waits for a feeding child to finish and sign what is waiting.
CLOSE_SECONDS: Final = 10.0
#: Entries read at a time when looking back for where the board and the log last agree,
#: and how far back at most (the board prunes beyond 100,000 events by default: no
#: agreement that far back means another board altogether, witnessed from its start).
_RECONCILE_PAGE: Final = 256
_RECONCILE_MOST: Final = 200_000
#: Its scheduling priority below the server's (``nice``), where ``SCHED_IDLE`` is not to be
#: had (see ``_yield_to_claims``).
WITNESS_NICENESS: Final = 10


class Witness(Protocol):
    """What a server needs of its witness: the log to read, the key, a start and a stop."""

    log: MerkleLog
    key: str

    @property
    def witnessed(self) -> int:
        """How far the board's event log has been witnessed (an event number)."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class WitnessFeeder:
    def __init__(
        self,
        log: MerkleLog,
        store: Store,
        signing_key: nacl.signing.SigningKey,
        name: str,
        *,
        clock: Callable[[], Timestamp] = time.time,
        batch: int = 5000,
        checkpoint_seconds: float = 1.0,
    ) -> None:
        self.log = log
        self.store = store
        self.name = name
        self.key = verifier_key(name, bytes(signing_key.verify_key))
        self._signing_key = signing_key
        self.clock = clock
        self.batch = batch
        self.checkpoint_seconds = checkpoint_seconds
        self._signed_size = max((size for size, _ in log.checkpoints()), default=-1)
        #: How far the board has been witnessed (its event number): read without a lock,
        #: so the board can ask while this feeder appends (see keep_events_after).
        self.witnessed = log.cursor(BOARD_SOURCE)
        self._signed_at = 0.0
        self._lock = threading.Lock()  # one round at a time (thread, close, tests)
        #: This feeder's name for the sequencer's lease of a shared log.
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = Outage(_log, "witness round")
        #: whether the board was found to still hold what the log witnessed (once, on
        #: the first round: the board can only lose events across a restart)
        self._reconciled = False

    def run_once(self, *, force_checkpoint: bool = False) -> int:
        """Witness the events waiting; sign a checkpoint if one is due. Returns how many
        entries were appended. On a log shared by several servers, only the holder of
        the sequencer's lease appends and signs; the others do nothing."""
        with self._lock:
            lead = getattr(self.log, "lead", None)
            if lead is not None:
                if not lead(self.holder):
                    return 0
                self.log.refresh()  # what the previous sequencer appended
            cursor = self.log.cursor(BOARD_SOURCE)
            entries: list[bytes] = []
            if not self._reconciled:
                agreed = self._agreed(cursor)
                if agreed != cursor:
                    entries.append(
                        self._own_entry(
                            self.log.size,
                            "witness.rewound",
                            {"board_events_agree_up_to": agreed, "witnessed_up_to": cursor},
                        )
                    )
                    cursor = agreed
                self._reconciled = True
            stored = self.store.events_since(cursor, self.batch)
            if stored and stored[0].seq != cursor + 1 and cursor > 0:
                # The board's log was pruned past events never witnessed: say so.
                gap = {"first_board_event": cursor + 1, "last_board_event": stored[0].seq - 1}
                entries.append(self._own_entry(self.log.size, "witness.gap", gap))
            first = self.log.size + len(entries)
            entries += [
                encode_entry(entry_of_board_event(event, first + offset))
                for offset, event in enumerate(stored)
            ]
            if entries:
                position = stored[-1].seq if stored else cursor
                self.log.append(entries, source=BOARD_SOURCE, position=position)
                self.witnessed = position
            now = self.clock()
            due = now - self._signed_at >= self.checkpoint_seconds
            if self.log.size != self._signed_size and (due or force_checkpoint):
                self._sign(now)
            return len(entries)

    def start(self, interval: float = 0.1) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self._rounds()

        self._thread = threading.Thread(target=loop, name="ifab-witness", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, witness what is left and sign a last checkpoint."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            while self.run_once(force_checkpoint=True) >= self.batch:
                pass
        except StoreError as exc:  # the next start takes up from the cursor: nothing lost
            _log.warning("the witness could not catch up before stopping: %s", exc)

    def _rounds(self) -> None:
        """Catch up (several rounds if behind). A failure (the disk, say) is logged and
        tried again next time: the cursor makes a retry safe, and the thread lives on."""
        try:
            while self.run_once() >= self.batch:
                pass
            self._outage.ended()
        except Exception:
            self._outage.failed()

    def _sign(self, now: Timestamp) -> None:
        size = self.log.size
        checkpoint = Checkpoint(self.name, size, self.log.root(), format_timestamp(now))
        self.log.save_checkpoint(size, sign_checkpoint(checkpoint, self.name, self._signing_key))
        self._signed_size, self._signed_at = size, now

    def _agreed(self, cursor: int) -> int:
        """The last board event both the board and this log still hold alike, walking
        back from ``cursor`` (which it normally is, found at the first look).

        The board can lose events the log has already witnessed: a power cut under
        ``synchronous=NORMAL`` (commits not yet flushed), a board file restored from an
        older copy, Redis losing writes. Its event numbers then start again below the
        cursor, and reading on from the cursor would skip, without a trace, the new
        events that reuse those numbers. Each witnessed board entry names its event
        (``source.board_event``) and is derived from it byte for byte, so derive it again
        from what the board holds now and compare."""
        index = self.log.size
        oldest = max(0, index - _RECONCILE_MOST)
        while cursor > 0 and index > oldest:
            start = max(oldest, index - _RECONCILE_PAGE)
            for at, _, data in reversed(self.log.entries(start, index)):
                try:
                    seq = decode_entry(data).source.get("board_event")
                except msgspec.DecodeError:
                    # the log itself was tampered with (`ifab witness verify` names the
                    # entry): nothing to compare the board with, so go on from the cursor
                    return cursor
                if not isinstance(seq, int) or seq > cursor:
                    # the feeder's own entries (gap, rewound) name no event; those past
                    # the cursor were lost already, and a rewound entry says so
                    continue
                held = self.store.events_since(seq - 1, 1)
                if not held:  # the board has nothing from there on
                    continue
                if held[0].seq != seq:  # pruned since: older than anything it could lose
                    return cursor if seq == cursor else seq
                if encode_entry(entry_of_board_event(held[0], at)) == data:
                    return seq
            index = start
        return 0 if self.log.size else cursor  # none agree: another board, from its start

    def _own_entry(self, index: int, event: str, payload: dict[str, Any]) -> bytes:
        """An entry the feeder writes about the board's log itself (``witness.gap``,
        ``witness.rewound``): it names no board event."""
        return encode_entry(
            WitnessEntry(
                index=index,
                component="witness",
                event=event,
                at=format_timestamp(self.clock()),
                payload=payload,
            )
        )


class WitnessProcess:
    """The feeder in a child process of its own, for ``ifab serve``.

    The server's event loop holds Python's GIL for most of each request; a feeder thread
    beside it took about 10 % of the claims the server could serve. In a process it has
    its own interpreter (and, on a machine with cores to spare, its own core). The server keeps the log open for reading (proofs, checkpoints); the child
    writes it. The child exits when told, or by itself when its parent is gone (a
    ``kill -9`` of the server), finishing and signing what is waiting first.
    """

    def __init__(
        self,
        board_path: Path,
        witness_path: Path,
        synchronous: Literal["FULL", "NORMAL"],
        signing_key: nacl.signing.SigningKey,
        name: str,
    ) -> None:
        self.log: MerkleLog = WitnessLog(witness_path, synchronous=synchronous)  # read here
        self.key = verifier_key(name, bytes(signing_key.verify_key))
        context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        # Pipes, not multiprocessing Events: an Event's set() waits for every process
        # sleeping on it to wake and say so, and a child in the idle class on a busy
        # machine may not run for minutes. A write to a pipe waits for nobody.
        stop_reader, self._stop_writer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_feed_in_child,
            args=(
                str(board_path),
                str(witness_path),
                synchronous,
                bytes(signing_key),
                name,
                os.getpid(),
                stop_reader,
            ),
            name="ifab-witness",
            daemon=True,
        )

    def start(self) -> None:
        self._process.start()

    @property
    def witnessed(self) -> int:
        """How far the child has witnessed the board (read from the log it writes; a
        read here never waits for the child's appends)."""
        return self.log.cursor(BOARD_SOURCE)

    @property
    def pid(self) -> int | None:
        """The child's process id (``None`` before it started)."""
        return self._process.pid

    def close(self) -> None:
        """Let the child finish what is waiting and sign it, within ``CLOSE_SECONDS``.

        The child runs in the idle class, so on a machine kept busy (a loaded CI box,
        a test suite beside it) it may get no time at all: ``ifab serve`` waited 30 s
        for it on SIGTERM, past the patience of a test harness and of most service
        managers. So it is let out of the idle class where the system allows it (again
        while waiting: a child just starting may only now enter it), and ended when the
        time is up. Nothing is lost by ending it: the next start resumes from the
        cursor."""
        if self._stop_writer.closed:  # closed already
            return
        with contextlib.suppress(OSError):  # (a child gone already closed its end)
            self._stop_writer.send_bytes(b"stop")
        process = self._process
        deadline = time.monotonic() + CLOSE_SECONDS
        while process.pid is not None and process.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # (not Linux; not allowed unprivileged)
                os.sched_setscheduler(process.pid, os.SCHED_OTHER, os.sched_param(0))
            ioprio.set_io_class(process.pid, ioprio.DEFAULT)  # its last flush waits for nobody
            process.join(timeout=0.25)
        for end in (process.terminate, process.kill):  # (SIGKILL: a stopped child too)
            if process.pid is None or not process.is_alive():  # never started, or ended
                break
            end()
            process.join(timeout=2)
        self._stop_writer.close()


def _feed_in_child(
    board_path: str,
    witness_path: str,
    synchronous: Literal["FULL", "NORMAL"],
    seed: bytes,
    name: str,
    parent: int,
    stop: Any,
) -> None:
    from infrafabric.storage.sqlite import SqliteStore  # in the child only

    if not stop.poll(0):  # (told to stop while starting: finish at the usual priority)
        _yield_to_claims()
    store = SqliteStore(board_path, synchronous=synchronous)
    log = WitnessLog(witness_path, synchronous=synchronous)
    feeder = WitnessFeeder(log, store, nacl.signing.SigningKey(seed), name)
    try:
        while not stop.poll(CHILD_INTERVAL) and os.getppid() == parent:
            feeder._rounds()
        feeder.close()  # what is left, and a last checkpoint
    finally:
        log.close()
        store.close()


def _yield_to_claims() -> None:
    """Claims first: the witness runs only on a core nothing else wants (``SCHED_IDLE``).

    Niced (``nice`` 10) it still took a core from the server or its clients for a few
    milliseconds at a time now and then (a round appends about a hundred entries; the
    scheduler may let a niced task run on before a thread of the server that woke up).
    A task of the idle class is put off the core as soon as another wakes. Three servers
    (a niced witness, an idle-class one, none) took the load in 2 s windows in turn at
    1,000 claims/s (FULL), 24 windows each, twice: the claim p99 of all windows pooled
    was 19.6 and 27.6 ms with the niced witness, 5.4 and 10.0 ms with the idle-class
    one, 5.8 and 18.0 ms without; the median of the windows' p99s 5.0 and 12.3, 4.7 and
    8.3, 4.5 and 11.8 ms. The niced one had windows with a p99 of 66 to 155 ms.

    The server itself takes about one core at most (Python's GIL), so on two cores the
    witness finds time; on a machine other programs keep busy it may fall behind, and
    the board then keeps the events it has not read yet (``keep_events_after`` of
    :class:`~infrafabric.storage.sqlite.SqliteStore`, up to ten times its retention):
    its log and checkpoints are late, not missing an event."""
    os.nice(WITNESS_NICENESS)  # where the idle class is not to be had
    with contextlib.suppress(AttributeError, OSError):  # (not Linux; a sandbox refusing)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # Its disk requests wait too. A group commit's flush that queued behind the witness
    # log's (its WAL flushed at each signed checkpoint, its own checkpoints) held the
    # server's event loop, and every request with it. The witness's cost on the median
    # window's claim p99 at 1,000 claims/s (FULL, bench/witness.py's claim_cost, 36
    # windows each, 2026-12-04): +24 % (95 % interval +5 % to +42 %, control +0 %) with
    # its I/O in the default class; -1 % (-12 % to +14 %, control -2 %) and +9 % (-7 %
    # to +23 %, control +10 %) in the idle class (those two runs with a throwaway
    # loop-lag probe in every server); over 150 rounds, -2 % (-10 % to +8 %) and -7 %
    # (-14 % to +3 %): under the 10 % aim. Where the class cannot be set, nothing changes.
    ioprio.set_io_class(0, ioprio.IDLE)
