"""Embedding cache: a text embedded once by a model is not embedded again.

Repeated questions, re-ingested documents whose chunks did not change and
retried requests all ask for vectors the model already computed. A vector is a
pure function of (model, kind of text, text, and the document's title for a
model that embeds titles), so the key is exactly that: the model id, "query"
or "document", and the SHA-256 of the text, or of the title and the text when
there is a title (short keys, no content in the store; an untitled text keeps
the key it had before titles were sent). Vectors are stored as little-endian float32 bytes,
the dtype the model produces, so a cached vector is bit-identical to a fresh one.
"""

import hashlib
from collections.abc import Sequence
from itertools import repeat

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

    def _key(self, text: str, kind: TextKind, title: str) -> str:
        # The title's length makes the join unambiguous: "a" + "bc" is not "ab" + "c".
        content = f"{len(title)}:{title}{text}" if title else text
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        return f"{self._model}:{kind}:{digest}"

    def _keys(self, texts: Sequence[str], kind: TextKind, titles: Sequence[str]) -> list[str]:
        return [
            self._key(text, kind, title)
            for text, title in zip(texts, titles or repeat(""), strict=False)
        ]

    async def get_many(
        self, texts: Sequence[str], kind: TextKind, titles: Sequence[str] = ()
    ) -> list[Matrix | None]:
        """The cached vector of each text (with its title, when `titles` are
        given), or None (a value of the wrong size is a miss)."""
        found = await self._store.get_many(self._keys(texts, kind, titles))
        expected = self._dimension * VECTOR_DTYPE.itemsize
        return [
            np.frombuffer(value, dtype=VECTOR_DTYPE).astype(np.float32)
            if value is not None and len(value) == expected
            else None
            for value in found
        ]

    async def set_many(
        self, texts: Sequence[str], kind: TextKind, vectors: Matrix, titles: Sequence[str] = ()
    ) -> None:
        """Store one vector (a row of `vectors`) per text (and title)."""
        rows = np.asarray(vectors, dtype=VECTOR_DTYPE)
        keys = self._keys(texts, kind, titles)
        items = {key: row.tobytes() for key, row in zip(keys, rows, strict=True)}
        await self._store.set_many(items, self._ttl_seconds)
