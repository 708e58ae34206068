"""Group commit: one thread carries out the signed messages, many per transaction.

Handing each request to a thread pool costs a thread switch per message and, with
``synchronous=FULL``, a disk flush per message. The committer takes the messages that are
waiting (up to ``max_batch``), carries them out in one store transaction
(:meth:`~infrafabric.service.FabricService.handle_batch`), then answers them all. A lone
message waits for nobody: a batch is whatever piled up while the previous one committed,
so batches grow with load and latency stays one commit when the fabric is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    def __init__(self, service: FabricService, *, max_batch: int = MAX_BATCH) -> None:
        self.service = service
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def submit(self, data: bytes, now: Timestamp) -> dict[str, Any]:
        """Carry out one wire message; its reply, or the service's refusal raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._start()
        self._jobs.put((data, now, future, loop))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the messages already submitted, then stop the thread."""
        thread = self._thread
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join(timeout)
            self._thread = None
        # Anything submitted after the stop (a request racing the shutdown) is refused
        # rather than left waiting for a thread that is gone.
        late: list[_Job] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                late.append(job)
        if late:
            refusal = ServiceError("STORE_UNAVAILABLE", "the fabric is stopping", 503)
            self._answer(late, [refusal] * len(late))

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                # Started on first use: the embedded fabric has no ASGI lifespan to do it.
                self._thread = threading.Thread(
                    target=self._run, name="ifab-committer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
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
