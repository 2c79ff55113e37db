"""Dynamic micro-batching: many small concurrent requests share model batches.

A model call costs nearly the same for 1 text as for 32, so embedding one chunk
or one question per call wastes most of the hardware. Requests wait in a queue;
a single worker takes up to `max_batch` texts (waiting at most `max_wait` after
the first one arrives), runs one model call in a thread and hands every caller
its rows. Queries are served before documents so that a question never waits
behind a whole ingestion backlog, only behind the batch already running.
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.embedding.backends import Matrix, TextKind


@dataclass
class _Pending:
    texts: Sequence[str]
    kind: TextKind
    future: asyncio.Future[Matrix]
    enqueued_at: float = field(default_factory=time.perf_counter)
    rows: list[Matrix] = field(default_factory=list)
    next_index: int = 0

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.next_index


@dataclass(frozen=True)
class BatchStats:
    """What one model call did: for metrics and tests."""

    size: int
    requests: int
    queue_wait_seconds: float


class MicroBatcher:
    """Batches concurrent `embed` calls into model calls of at most `max_batch` texts."""

    def __init__(
        self,
        model_call: Callable[[Sequence[str], TextKind], Matrix],
        max_batch: int = 32,
        max_wait: float = 0.005,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._model_call = model_call
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._on_batch = on_batch
        self._queues: dict[TextKind, deque[_Pending]] = {"query": deque(), "document": deque()}
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a model call (queue depth)."""
        return sum(p.remaining for q in self._queues.values() for p in q)

    async def embed(self, texts: Sequence[str], kind: TextKind) -> Matrix:
        """Rows for `texts`, in order, once the batches holding them have run."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="embedding-batcher")
        future: asyncio.Future[Matrix] = asyncio.get_running_loop().create_future()
        self._queues[kind].append(_Pending(texts, kind, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop the worker; pending callers get CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for queue in self._queues.values():
            for pending in queue:
                pending.future.cancel()

    def _kind_to_serve(self) -> TextKind | None:
        if self._queues["query"]:
            return "query"
        if self._queues["document"]:
            return "document"
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            kind = self._kind_to_serve()
            if kind is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queue = self._queues[kind]
            deadline = queue[0].enqueued_at + self._max_wait
            while sum(p.remaining for p in queue) < self._max_batch:
                delay = deadline - time.perf_counter()
                if delay <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
            batch, owners = self._take(queue)
            started = time.perf_counter()
            try:
                matrix = await loop.run_in_executor(None, self._model_call, batch, kind)
            except Exception as error:  # the model failed: every owner learns why
                for pending, _, _ in owners:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                    with contextlib.suppress(ValueError):
                        queue.remove(pending)
                continue
            if self._on_batch is not None:
                waits = [started - p.enqueued_at for p, _, _ in owners]
                self._on_batch(BatchStats(len(batch), len(owners), max(waits)))
            for pending, start, end in owners:
                pending.rows.append(matrix[start:end])
                if pending.remaining == 0 and not pending.future.done():
                    pending.future.set_result(np.concatenate(pending.rows))

    def _take(self, queue: deque[_Pending]) -> tuple[list[str], list[tuple[_Pending, int, int]]]:
        """Pop up to max_batch texts from the head of `queue`, splitting big requests."""
        batch: list[str] = []
        owners: list[tuple[_Pending, int, int]] = []
        while queue and len(batch) < self._max_batch:
            pending = queue[0]
            if pending.future.cancelled():
                queue.popleft()
                continue
            count = min(pending.remaining, self._max_batch - len(batch))
            start = len(batch)
            batch.extend(pending.texts[pending.next_index : pending.next_index + count])
            pending.next_index += count
            owners.append((pending, start, start + count))
            if pending.remaining == 0:
                queue.popleft()
        return batch, owners
