"""EmbeddingService: validates requests, micro-batches them, returns vectors.

With a VectorCache, a request's texts are looked up in one round trip first;
only the misses go to the micro-batcher (and so to the model), and their
vectors are stored for next time.

A model's failure reaches the caller as the embedder raised it: a text the
model refused is INVALID_ARGUMENT, a quota still exhausted after the
embedder's retries RESOURCE_EXHAUSTED, an unreachable model UNAVAILABLE.
"""

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from grpc import aio

from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.errors import InvalidInputError, TooLargeError
from services.embedding.backends import Embedder, Matrix, TextKind, TokenCounting
from services.embedding.batcher import MicroBatcher
from services.embedding.vector_cache import VectorCache

_TOKEN_COUNTING: dict[TokenCounting, embedding_pb2.TokenCounting.ValueType] = {
    "tokenizer": embedding_pb2.TOKEN_COUNTING_TOKENIZER,
    "utf8_bytes_upper_bound": embedding_pb2.TOKEN_COUNTING_UTF8_BYTES_UPPER_BOUND,
}


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

    async def _embed(
        self, texts: Sequence[str], kind: TextKind, titles: Sequence[str] = ()
    ) -> Matrix:
        """One row per text: cached rows as stored, the others from the model."""
        if self._cache is None:
            return await self._batcher.embed(texts, kind, titles=titles)
        rows = await self._cache.get_many(texts, kind, titles)
        missing = [index for index, row in enumerate(rows) if row is None]
        if missing:
            missing_texts = [texts[index] for index in missing]
            missing_titles = [titles[index] for index in missing] if titles else []
            fresh = await self._batcher.embed(missing_texts, kind, titles=missing_titles)
            await self._cache.set_many(missing_texts, kind, fresh, missing_titles)
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
        titles = list(request.titles)
        self._check(texts)
        if titles and len(titles) != len(texts):
            raise InvalidInputError(
                f"{len(titles)} titles for {len(texts)} texts: send one per text, or none"
            )
        limit = self._embedder.max_input_tokens
        for index, count in enumerate(self._embedder.count_tokens(texts)):
            if count > limit:
                raise InvalidInputError(
                    f"texts[{index}] counts {count} tokens; {self._embedder.model_name} reads "
                    f"at most {limit} (special tokens included): split it, it is not truncated"
                )
        matrix = await self._embed(texts, "document", titles)
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
            token_counting=_TOKEN_COUNTING[self._embedder.token_counting],
        )
