"""EmbeddingService: validates requests, micro-batches them, returns vectors."""

from collections.abc import Sequence
from typing import Any

from grpc import aio

from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.errors import InvalidInputError, TooLargeError
from services.embedding.backends import Embedder, Matrix
from services.embedding.batcher import MicroBatcher


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """gRPC edge of the embedding service."""

    def __init__(self, embedder: Embedder, batcher: MicroBatcher, max_texts: int) -> None:
        self._embedder = embedder
        self._batcher = batcher
        self._max_texts = max_texts

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

    def _vectors(self, matrix: Matrix) -> list[embedding_pb2.Vector]:
        return [embedding_pb2.Vector(values=row) for row in matrix.tolist()]

    async def EmbedQueries(
        self, request: embedding_pb2.EmbedQueriesRequest, context: aio.ServicerContext[Any, Any]
    ) -> embedding_pb2.EmbedQueriesResponse:
        self._check(request.texts)
        matrix = await self._batcher.embed(list(request.texts), "query")
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
        matrix = await self._batcher.embed(texts, "document")
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
