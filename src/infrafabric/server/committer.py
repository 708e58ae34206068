"""Group commit: the signed messages (and an embedded fabric's unsigned board operations,
:class:`~infrafabric.service.InProcess`) are carried out many per transaction.

Handing each request to a thread pool costs a thread switch per message and, with
``synchronous=FULL``, a disk flush per message. The committer takes the messages that are
waiting (up to ``max_batch``), carries them out in one store transaction
(:meth:`~infrafabric.service.FabricService.handle_batch`), then answers them all. A lone
message waits for nobody: a batch is whatever piled up while the previous one committed,
so batches grow with load and latency stays one commit when the fabric is idle.

Where a batch runs depends on the store:

* **On the event loop's own thread** (``on_loop``, a local store: SQLite). A batch takes
  a fraction of a millisecond, and a committer thread beside the event loop cost more
  than it saved: each message crossed threads twice (a queue, then a wake-up of the
  loop), and the two threads took Python's GIL from each other at every SQLite call, so
  a batch of one took 0.87 ms of wall time for about 0.35 ms of work (measured at 1,000
  claims/s, ``synchronous=FULL``, the committer 90 % busy). On the loop, in alternating
  runs of ``bench/claims.py``'s steady load: claim p99 7.1 → 5.2 ms (FULL) and 4.9 → 3.2
  ms (NORMAL), saturation 2,900 → 3,470 claims/s, server CPU per claim 333 → 266 us.
  The loop reads no frame while a batch runs; the frames that arrive meanwhile make
  the next batch. A batch is bounded (``max_batch``), and the store's readers (in the
  thread pool) share its lock, so a write would wait for them on any thread.
  A server has one event loop; an embedded fabric may have several (agents in threads of
  their own, each with ``asyncio.run``, or each a ``SyncClient`` with its loop thread):
  every loop then has its own queue and runs its own batches, one at a time across the
  loops (the store's lock), as a server's worker threads do over Redis.
* **On ``workers`` threads** (a shared store: Redis). A store without group commit
  gains nothing from batches, and a thread that waits for each round trip in turn
  leaves both the server's CPU and Redis idle, so several threads run side by side;
  and a Redis that stops answering must stall those threads, not the event loop (which
  keeps answering health checks and refusing what it cannot do). The messages of one
  connection (its ``key``) always go to the same thread, so they are still carried out
  in the order sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from infrafabric.service import FabricService, InProcess, ServiceError
from infrafabric.types import Timestamp

__all__ = ["MAX_BATCH", "Committer"]

#: Messages per transaction at most: enough to amortize a commit, few enough that the
#: store's write lock is never held for long.
MAX_BATCH: Final = 64

_Job = tuple[
    bytes | InProcess, Timestamp, "asyncio.Future[dict[str, Any]]", asyncio.AbstractEventLoop
]
_STOP: Final = None


class Committer:
    """Runs :meth:`FabricService.handle_batch` on the event loop that submits (``on_loop``:
    each loop its own batches) or on threads of its own for any event loop."""

    def __init__(
        self,
        service: FabricService,
        *,
        max_batch: int = MAX_BATCH,
        workers: int = 1,
        on_loop: bool = False,
    ) -> None:
        self.service = service
        self.max_batch = max_batch
        self.on_loop = on_loop
        # on the loop: each event loop's queue (forgotten with the loop), and whether
        # submissions are still taken
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_lock = threading.Lock()
        self._closed = False
        self._queues: list[queue.SimpleQueue[_Job | None]] = [
            queue.SimpleQueue() for _ in range(workers)
        ]
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._turn = itertools.count()

    async def submit(
        self, data: bytes | InProcess, now: Timestamp, key: object = None
    ) -> dict[str, Any]:
        """Carry out one wire message (or an operation from this process); its reply, or
        the service's refusal raised. Messages with the same ``key`` (a connection) are
        carried out in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        if self.on_loop:
            return await self._submit_on_loop(data, now, future, loop)
        self._start()
        # A key's own hash will not do: an object's is its address shifted, and objects
        # of one kind lie a fixed stride apart, so modulo 8 a hundred connections fell
        # into two lanes (the other six threads idle, a claim waiting 130 ms at 700/s).
        # Hashing it inside a tuple mixes the bits.
        lane = next(self._turn) if key is None else hash((key,))
        self._queues[lane % len(self._queues)].put((data, now, future, loop))
        return await future

    async def _submit_on_loop(
        self,
        data: bytes | InProcess,
        now: Timestamp,
        future: asyncio.Future[dict[str, Any]],
        loop: asyncio.AbstractEventLoop,
    ) -> dict[str, Any]:
        # Under the lock, which close() takes too: a job appended to a list close() has
        # already swapped out would never be answered. (Uncontended, it costs 0.1 us.)
        with self._loops_lock:
            if self._closed:
                raise ServiceError("STORE_UNAVAILABLE", "the fabric is stopping", 503)
            queue_ = self._loops.get(loop)
            if queue_ is None:
                queue_ = self._loops[loop] = _LoopQueue()
            queue_.waiting.append((data, now, future, loop))
            due, queue_.due = queue_.due, True
        if not due:
            # after what the loop has ready (replies to send, frames read): those frames
            # join this batch
            loop.call_soon(self._carry_out_waiting, queue_, loop)
        return await future

    def _carry_out_waiting(self, queue_: _LoopQueue, loop: asyncio.AbstractEventLoop) -> None:
        """One batch of what is waiting on this loop; the next one after the loop has
        had its turn (it sends these replies and reads the frames that came meanwhile)."""
        with self._loops_lock:
            batch = queue_.waiting[: self.max_batch]
            del queue_.waiting[: len(batch)]
        try:
            if batch:
                _settle(list(zip((job[2] for job in batch), self._results(batch), strict=True)))
        finally:
            with self._loops_lock:
                more = queue_.due = bool(queue_.waiting)
            if more:
                loop.call_soon(self._carry_out_waiting, queue_, loop)

    def _close_on_loop(self, timeout: float) -> None:
        """Take no more; let each loop carry out what is waiting on it (or carry it out
        here, for the loop this is called on); refuse what is left when the time is up."""
        with self._loops_lock:
            self._closed = True
            queues = list(self._loops.items())
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        deadline = time.monotonic() + timeout
        for loop, queue_ in queues:
            while queue_.waiting and time.monotonic() < deadline:
                if loop is here:
                    self._carry_out_waiting(queue_, loop)
                elif loop.is_running():
                    time.sleep(0.005)
                else:
                    break
            with self._loops_lock:
                late, queue_.waiting = queue_.waiting, []
            if late:
                refusal = ServiceError("STORE_UNAVAILABLE", "the fabric is stopping", 503)
                self._answer(late, [refusal] * len(late))

    def close(self, timeout: float = 10.0) -> None:
        """Finish the messages already submitted, then stop the threads (from any
        thread; ``on_loop``, each loop with messages waiting must still run, or this be
        called on it)."""
        if self.on_loop:
            self._close_on_loop(timeout)
            return
        threads, self._threads = self._threads, []
        for jobs in self._queues[: len(threads)]:
            jobs.put(_STOP)
        for thread in threads:
            thread.join(timeout)
        # Anything submitted after the stop (a request racing the shutdown) is refused
        # rather than left waiting for a thread that is gone.
        late: list[_Job] = []
        for jobs in self._queues:
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    late.append(job)
        if late:
            refusal = ServiceError("STORE_UNAVAILABLE", "the fabric is stopping", 503)
            self._answer(late, [refusal] * len(late))

    def _start(self) -> None:
        if self._threads:
            return
        with self._start_lock:
            if not self._threads:
                # Started on first use: the embedded fabric has no ASGI lifespan to do it.
                threads = [
                    threading.Thread(
                        target=self._run, args=(jobs,), name=f"ifab-committer-{n}", daemon=True
                    )
                    for n, jobs in enumerate(self._queues)
                ]
                for thread in threads:
                    thread.start()
                self._threads = threads

    def _run(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            first = jobs.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                batch.append(job)
            self._carry_out(batch)
            if stopping:
                return

    def _carry_out(self, batch: Sequence[_Job]) -> None:
        self._answer(batch, self._results(batch))

    def _results(self, batch: Sequence[_Job]) -> Sequence[dict[str, Any] | BaseException]:
        try:
            return self.service.handle_batch([(data, now) for data, now, _, _ in batch])
        except Exception as exc:  # a bug must answer its callers, not kill the thread
            return [exc] * len(batch)

    @staticmethod
    def _answer(batch: Sequence[_Job], results: Sequence[dict[str, Any] | BaseException]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
        for (_, _, future, loop), result in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((future, result))
        for loop, settled in by_loop.items():
            # one wake-up per event loop, however many replies; a closed loop has nobody
            # waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, settled)


@dataclass(eq=False)
class _LoopQueue:
    """What one event loop submitted and is not carried out yet, and whether a batch is
    due on it (``on_loop``). It keeps no reference to its loop: the committer's map of
    queues holds loops weakly, and a queue naming its loop kept every loop alive."""

    waiting: list[_Job] = field(default_factory=list)
    due: bool = False


def _settle(settled: Sequence[tuple[asyncio.Future[dict[str, Any]], Any]]) -> None:
    for future, result in settled:
        if future.done():  # the caller gave up (cancelled, timed out)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
