"""Group commit: one thread carries out the signed messages, many per transaction.

Handing each request to a thread pool costs a thread switch per message and, with
``synchronous=FULL``, a disk flush per message. The committer takes the messages that are
waiting (up to ``max_batch``), carries them out in one store transaction
(:meth:`~infrafabric.service.FabricService.handle_batch`), then answers them all. A lone
message waits for nobody: a batch is whatever piled up while the previous one committed,
so batches grow with load and latency stays one commit when the fabric is idle.

A store without group commit (Redis) gains nothing from batches, and a thread that waits
for each round trip in turn leaves both the server's CPU and Redis idle: there the
committer runs ``workers`` threads side by side. The messages of one connection (its
``key``) always go to the same thread, so they are still carried out in the order sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import Sequence
from typing import Any, Final

from infrafabric.service import FabricService, ServiceError
from infrafabric.types import Timestamp

__all__ = ["MAX_BATCH", "Committer"]

#: Messages per transaction at most: enough to amortize a commit, few enough that the
#: store's write lock is never held for long.
MAX_BATCH: Final = 64

_Job = tuple[bytes, Timestamp, "asyncio.Future[dict[str, Any]]", asyncio.AbstractEventLoop]
_STOP: Final = None


class Committer:
    """Runs :meth:`FabricService.handle_batch` on its own thread for any event loop."""

    def __init__(
        self, service: FabricService, *, max_batch: int = MAX_BATCH, workers: int = 1
    ) -> None:
        self.service = service
        self.max_batch = max_batch
        self._queues: list[queue.SimpleQueue[_Job | None]] = [
            queue.SimpleQueue() for _ in range(workers)
        ]
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._turn = itertools.count()

    async def submit(self, data: bytes, now: Timestamp, key: object = None) -> dict[str, Any]:
        """Carry out one wire message; its reply, or the service's refusal raised.
        Messages with the same ``key`` (a connection) are carried out in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._start()
        lane = next(self._turn) if key is None else hash(key)
        self._queues[lane % len(self._queues)].put((data, now, future, loop))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the messages already submitted, then stop the threads."""
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
        results: Sequence[dict[str, Any] | BaseException]
        try:
            results = self.service.handle_batch([(data, now) for data, now, _, _ in batch])
        except Exception as exc:  # a bug must answer its callers, not kill the thread
            results = [exc] * len(batch)
        self._answer(batch, results)

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


def _settle(settled: Sequence[tuple[asyncio.Future[dict[str, Any]], Any]]) -> None:
    for future, result in settled:
        if future.done():  # the caller gave up (cancelled, timed out)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
