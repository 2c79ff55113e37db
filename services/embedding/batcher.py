"""Dynamic micro-batching: many small concurrent requests share model batches.

A model call costs nearly the same for 1 text as for 32, so embedding one chunk
or one question per call wastes most of the hardware. Requests wait in a queue;
a single worker takes up to `max_batch` texts (waiting at most `max_wait` after
the first one arrives), runs one model call in a thread and hands every caller
its rows. With `max_wait` 0 (the service's default) nothing waits for company:
an idle model starts on a lone question at once, and under load batches form
from whatever queued while the previous model call ran. Queries are served
before documents so that a question never waits behind a whole ingestion
backlog, only behind the batch already running.

Batches are formed by length. A model call pads every text to the longest one
in its batch, so a batch that mixes a 40-token and a 250-token text computes
250 tokens for both, so taking texts in arrival order wastes model time
(docs/benchmarks.md). When more texts wait than one batch holds,
the batch is the `max_batch` texts of most similar length that include the
oldest waiting text: padding shrinks as the queue deepens, and since every
batch takes the oldest text, no text starves behind later ones.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.embedding.backends import Matrix, TextKind


@dataclass(eq=False)
class _Pending:
    """One `embed` call: its texts, and its rows as batches deliver them."""

    texts: Sequence[str]
    kind: TextKind
    future: asyncio.Future[Matrix]
    titles: Sequence[str] = ()
    """Empty, or each document text's title (see `Embedder.embed`)."""
    enqueued_at: float = field(default_factory=time.perf_counter)
    rows: Matrix | None = None
    remaining: int = 0

    def __post_init__(self) -> None:
        self.remaining = len(self.texts)

    def deliver(self, index: int, row: Matrix) -> None:
        if self.rows is None:
            self.rows = np.empty((len(self.texts), row.shape[0]), dtype=row.dtype)
        self.rows[index] = row
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.rows)


@dataclass(frozen=True, eq=False)
class _Item:
    """One waiting text: which call it belongs to, where, and its length."""

    pending: _Pending
    index: int
    length: int
    order: int
    """Arrival order: the oldest waiting item has the smallest."""


def _title(item: _Item) -> str:
    titles = item.pending.titles
    return titles[item.index] if titles else ""


@dataclass(frozen=True)
class BatchStats:
    """What one model call did: for metrics and tests."""

    size: int
    requests: int
    queue_wait_seconds: float
    padded_share: float = 0.0
    """Share of the batch's padded length that is padding (by the lengths given)."""


class MicroBatcher:
    """Batches concurrent `embed` calls into model calls of at most `max_batch` texts."""

    def __init__(
        self,
        model_call: Callable[[Sequence[str], TextKind, Sequence[str]], Matrix],
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
        self._queues: dict[TextKind, list[_Item]] = {"query": [], "document": []}
        self._arrivals = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a model call (queue depth)."""
        return sum(len(q) for q in self._queues.values())

    async def embed(
        self,
        texts: Sequence[str],
        kind: TextKind,
        lengths: Sequence[int] | None = None,
        titles: Sequence[str] = (),
    ) -> Matrix:
        """Rows for `texts`, in order, once the batches holding them have run.

        `lengths` (e.g. token counts) guide length-aware batching; characters
        are used when they are not given. `titles` (empty, or one per text)
        reach the model call with their texts.
        """
        if lengths is not None and len(lengths) != len(texts):
            raise ValueError(f"{len(lengths)} lengths given for {len(texts)} texts")
        if titles and len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles given for {len(texts)} texts")
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="embedding-batcher")
        future: asyncio.Future[Matrix] = asyncio.get_running_loop().create_future()
        pending = _Pending(texts, kind, future, titles)
        sizes = lengths if lengths is not None else [len(t) for t in texts]
        queue = self._queues[kind]
        start = self._arrivals
        queue.extend(_Item(pending, i, sizes[i], start + i) for i in range(len(texts)))
        self._arrivals += len(texts)
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop the worker; pending callers get CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for queue in self._queues.values():
            for item in queue:
                item.pending.future.cancel()
            queue.clear()

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
            deadline = queue[0].pending.enqueued_at + self._max_wait
            while len(queue) < self._max_batch:
                delay = deadline - time.perf_counter()
                if delay <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
            items = self._take(kind)
            if not items:
                continue
            texts = [item.pending.texts[item.index] for item in items]
            titles = [_title(item) for item in items]
            started = time.perf_counter()
            try:
                matrix = await loop.run_in_executor(None, self._model_call, texts, kind, titles)
            except Exception as error:  # the model failed: every owner learns why
                self._fail({id(item.pending): item.pending for item in items}, error)
                continue
            owners = {id(item.pending): item.pending for item in items}
            if self._on_batch is not None:
                longest = max(item.length for item in items)
                padded = longest * len(items)
                self._on_batch(
                    BatchStats(
                        size=len(items),
                        requests=len(owners),
                        queue_wait_seconds=max(started - p.enqueued_at for p in owners.values()),
                        padded_share=1 - sum(i.length for i in items) / padded if padded else 0.0,
                    )
                )
            for item, row in zip(items, matrix, strict=True):
                if not item.pending.future.done():
                    item.pending.deliver(item.index, row)

    def _fail(self, owners: dict[int, _Pending], error: Exception) -> None:
        """Fail every call that had a text in the failed batch, and drop its other texts."""
        for pending in owners.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for kind, queue in self._queues.items():
            self._queues[kind] = [item for item in queue if id(item.pending) not in owners]

    def _take(self, kind: TextKind) -> list[_Item]:
        """Remove and return the next batch of `kind`, length-aware (see the module doc)."""
        queue = [item for item in self._queues[kind] if not item.pending.future.done()]
        if len(queue) <= self._max_batch:
            self._queues[kind] = []
            return queue
        by_length = sorted(queue, key=lambda item: (item.length, item.order))
        oldest = min(queue, key=lambda item: item.order)
        position = by_length.index(oldest)
        size = self._max_batch
        first = max(0, position - size + 1)
        last = min(position, len(by_length) - size)
        start = min(
            range(first, last + 1),
            key=lambda s: by_length[s + size - 1].length - by_length[s].length,
        )
        chosen = by_length[start : start + size]
        taken = {id(item) for item in chosen}
        self._queues[kind] = [item for item in queue if id(item) not in taken]
        return sorted(chosen, key=lambda item: item.order)
