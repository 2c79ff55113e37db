"""Embedding cache: a text embedded once by a model is not embedded again.

Repeated questions, re-ingested documents whose chunks did not change and
retried requests all ask for vectors the model already computed. A vector is a
pure function of (model, kind of text, text), so the key is exactly that:
the model id, "query" or "document", and the SHA-256 of the text (short keys,
no content in the store). Vectors are stored as little-endian float32 bytes,
the dtype the model produces, so a cached vector is bit-identical to a fresh one.
"""

import hashlib
from collections.abc import Sequence

import numpy as np

from services.embedding.backends import Matrix, TextKind
from services.runtime.cache import Cache

VECTOR_DTYPE = np.dtype("<f4")


class VectorCache:
    """Vectors of one model in a `Cache`, looked up and stored many at a time."""

    def __init__(self, store: Cache, model: str, dimension: int, ttl_seconds: float) -> None:
        self._store = store
        self._model = model
        self._dimension = dimension
        self._ttl_seconds = ttl_seconds

    def _key(self, text: str, kind: TextKind) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"{self._model}:{kind}:{digest}"

    async def get_many(self, texts: Sequence[str], kind: TextKind) -> list[Matrix | None]:
        """The cached vector of each text, or None (a value of the wrong size is a miss)."""
        found = await self._store.get_many([self._key(text, kind) for text in texts])
        expected = self._dimension * VECTOR_DTYPE.itemsize
        return [
            np.frombuffer(value, dtype=VECTOR_DTYPE).astype(np.float32)
            if value is not None and len(value) == expected
            else None
            for value in found
        ]

    async def set_many(self, texts: Sequence[str], kind: TextKind, vectors: Matrix) -> None:
        """Store one vector (a row of `vectors`) per text."""
        rows = np.asarray(vectors, dtype=VECTOR_DTYPE)
        items = {
            self._key(text, kind): row.tobytes() for text, row in zip(texts, rows, strict=True)
        }
        await self._store.set_many(items, self._ttl_seconds)
