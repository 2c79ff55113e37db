"""Micro-batching: concurrent small calls share model calls, results stay in order."""

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from services.embedding.backends import Matrix, TextKind
from services.embedding.batcher import BatchStats, MicroBatcher


class RecordingModel:
    """A deterministic 'model': row i is [len(text_i), hash-ish]; records each call."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[list[str], TextKind]] = []
        self.titles: list[list[str]] = []
        self.gate = gate

    def __call__(self, texts: Sequence[str], kind: TextKind, titles: Sequence[str]) -> Matrix:
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append((list(texts), kind))
        self.titles.append(list(titles))
        return np.array([[len(t), sum(map(ord, t)) % 997] for t in texts], dtype=np.float32)


def expected(texts: Sequence[str]) -> Matrix:
    return np.array([[len(t), sum(map(ord, t)) % 997] for t in texts], dtype=np.float32)


async def test_concurrent_single_calls_share_batches() -> None:
    model = RecordingModel()
    stats: list[BatchStats] = []
    batcher = MicroBatcher(model, max_batch=16, max_wait=0.05, on_batch=stats.append)
    texts = [f"text number {i}" for i in range(64)]
    results = await asyncio.gather(*(batcher.embed([t], "document") for t in texts))
    await batcher.close()
    for text, rows in zip(texts, results, strict=True):
        np.testing.assert_array_equal(rows, expected([text]))
    assert len(model.calls) == 4
    assert all(len(call) == 16 for call, _ in model.calls)
    assert sum(s.size for s in stats) == 64


async def test_large_request_is_split_and_reassembled_in_order() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=8, max_wait=0.001)
    texts = [f"chunk {i} " * (i % 5 + 1) for i in range(30)]
    rows = await batcher.embed(texts, "document")
    await batcher.close()
    np.testing.assert_array_equal(rows, expected(texts))
    assert [len(c) for c, _ in model.calls] == [8, 8, 8, 6]


async def test_queries_are_served_before_queued_documents() -> None:
    gate = threading.Event()
    model = RecordingModel(gate)
    batcher = MicroBatcher(model, max_batch=4, max_wait=0.0)
    first = asyncio.create_task(batcher.embed(["blocking"], "document"))
    await asyncio.sleep(0.05)  # the first batch is now running (held by the gate)
    docs = asyncio.create_task(batcher.embed([f"d{i}" for i in range(8)], "document"))
    await asyncio.sleep(0.01)
    query = asyncio.create_task(batcher.embed(["question?"], "query"))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, docs, query)
    await batcher.close()
    kinds = [kind for _, kind in model.calls]
    assert kinds[:2] == ["document", "query"]


async def test_model_failure_reaches_every_caller_and_batcher_recovers() -> None:
    calls = 0

    def flaky(texts: Sequence[str], kind: TextKind, titles: Sequence[str]) -> Matrix:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model exploded")
        return expected(texts)

    batcher = MicroBatcher(flaky, max_batch=8, max_wait=0.02)
    outcomes = await asyncio.gather(
        batcher.embed(["a"], "document"), batcher.embed(["b"], "document"), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    rows = await batcher.embed(["c"], "document")
    await batcher.close()
    np.testing.assert_array_equal(rows, expected(["c"]))


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(RecordingModel(), max_batch=0)


async def test_titles_reach_the_model_call_beside_their_texts() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch=8, max_wait=0.02)
    await asyncio.gather(
        batcher.embed(["a1", "a2"], "document", titles=["A", "A"]),
        batcher.embed(["b1"], "document"),
    )
    with pytest.raises(ValueError, match="titles"):
        await batcher.embed(["c1", "c2"], "document", titles=["C"])
    await batcher.close()
    assert model.calls == [(["a1", "a2", "b1"], "document")]
    assert model.titles == [["A", "A", ""]]
