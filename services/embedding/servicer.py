"""EmbeddingService: validates requests, micro-batches them, returns vectors.

With a VectorCache, a request's texts are looked up in one round trip first;
only the misses go to the micro-batcher (and so to the model), and their
vectors are stored for next time.
"""

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from grpc import aio

from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.errors import InvalidInputError, TooLargeError
from services.embedding.backends import Embedder, Matrix, TextKind
from services.embedding.batcher import MicroBatcher
from services.embedding.vector_cache import VectorCache


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """gRPC edge of the embedding service."""

    def __init__(
        self,
        embedder: Embedder,
        batcher: MicroBatcher,
        max_texts: int,
        cache: VectorCache | None = None,
    ) -> None:
        self._embedder = embedder
        self._batcher = batcher
        self._max_texts = max_texts
        self._cache = cache

    def _check(self, texts: Sequence[str]) -> None:
        if not texts:
            raise InvalidInputError("texts is empty: send at least one text to embed")
        if len(texts) > self._max_texts:
            raise TooLargeError(
                f"{len(texts)} texts in one request; the limit is {self._max_texts}"
            )
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidInputError(f"texts[{index}] is empty")

    async def _embed(self, texts: Sequence[str], kind: TextKind) -> Matrix:
        """One row per text: cached rows as stored, the others from the model."""
        if self._cache is None:
            return await self._batcher.embed(texts, kind)
        rows = await self._cache.get_many(texts, kind)
        missing = [index for index, row in enumerate(rows) if row is None]
        if missing:
            missing_texts = [texts[index] for index in missing]
            fresh = await self._batcher.embed(missing_texts, kind)
            await self._cache.set_many(missing_texts, kind, fresh)
            for index, row in zip(missing, fresh, strict=True):
                rows[index] = row
        return np.stack(cast("list[Matrix]", rows))  # every None was just filled

    def _vectors(self, matrix: Matrix) -> list[embedding_pb2.Vector]:
        return [embedding_pb2.Vector(values=row) for row in matrix.tolist()]

    async def EmbedQueries(
        self, request: embedding_pb2.EmbedQueriesRequest, context: aio.ServicerContext[Any, Any]
    ) -> embedding_pb2.EmbedQueriesResponse:
        self._check(request.texts)
        matrix = await self._embed(list(request.texts), "query")
        return embedding_pb2.EmbedQueriesResponse(
            vectors=self._vectors(matrix), model=self._embedder.model_name
        )

    async def EmbedDocuments(
        self, request: embedding_pb2.EmbedDocumentsRequest, context: aio.ServicerContext[Any, Any]
    ) -> embedding_pb2.EmbedDocumentsResponse:
        texts = list(request.texts)
        self._check(texts)
        limit = self._embedder.max_input_tokens
        for index, count in enumerate(self._embedder.count_tokens(texts)):
            if count > limit:
                raise InvalidInputError(
                    f"texts[{index}] has {count} tokens; {self._embedder.model_name} reads at "
                    f"most {limit} (special tokens included) and would silently truncate it"
                )
        matrix = await self._embed(texts, "document")
        return embedding_pb2.EmbedDocumentsResponse(
            vectors=self._vectors(matrix), model=self._embedder.model_name
        )

    async def GetModelInfo(
        self, request: embedding_pb2.GetModelInfoRequest, context: aio.ServicerContext[Any, Any]
    ) -> embedding_pb2.GetModelInfoResponse:
        return embedding_pb2.GetModelInfoResponse(
            model=self._embedder.model_name,
            dimension=self._embedder.dimension,
            max_input_tokens=self._embedder.max_input_tokens,
            tokenizer_json=self._embedder.tokenizer_json(),
            special_tokens_per_input=self._embedder.special_tokens_per_input,
        )
