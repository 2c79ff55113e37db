"""Run the embedding service: `python -m services.embedding`."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Self

from prometheus_client import Gauge, Histogram
from pydantic import Field, SecretStr, model_validator

import services.embedding.metrics  # noqa: F401  (remote-model metrics, declared whatever the backend)
from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc
from services.embedding.backends import Embedder, SentenceTransformerEmbedder
from services.embedding.batcher import BatchStats, MicroBatcher
from services.embedding.servicer import EmbeddingServicer
from services.embedding.vector_cache import VectorCache
from services.runtime.cache import build_cache
from services.runtime.costs import InputPrice, PriceTable
from services.runtime.metrics import LATENCY_BUCKETS
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import GoogleCloudSettings

if TYPE_CHECKING:
    from services.embedding.vertex import VertexEmbedder

BATCH_SIZE = Histogram(
    "rag_embedding_batch_size",
    "Texts per model call: how full the micro-batches are.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_WAIT = Histogram(
    "rag_embedding_queue_wait_seconds",
    "Longest time a text of a batch waited in the queue before its model call.",
    buckets=(0.001, 0.0025, *LATENCY_BUCKETS),
)
QUEUE_DEPTH = Gauge(
    "rag_embedding_queue_depth", "Texts waiting for a model call, sampled after each batch."
)


DEFAULT_EMBEDDING_PRICES = {"gemini-embedding-001": {"input": 0.15}}
"""Vertex AI's list price of gemini-embedding-001 (USD per 1M input tokens) when
this was written; text-embedding-005 is billed per character, so it has no
per-token price until a deployment converts its own (docs/embedding.md)."""


class EmbeddingSettings(GoogleCloudSettings):
    """Embedding service settings (env prefix RAG_)."""

    embedding_backend: Literal["minilm", "vertex"] = Field(
        default="minilm",
        description=(
            "Embedder: minilm (the packaged all-MiniLM-L6-v2, on this machine) or vertex "
            "(Vertex AI, RAG_VERTEX_EMBEDDING_*, RAG_GCP_PROJECT and RAG_GCP_LOCATION)."
        ),
    )
    embedding_device: str = Field(default="cpu", description="torch device for local models.")
    embedding_threads: int = Field(default=0, ge=0, description="torch threads; 0 = all cores.")
    embedding_max_batch: int = Field(
        default=32,
        ge=1,
        description=(
            "Texts per model call (vertex: per embed call, sent as concurrent requests "
            "within the per-request limits)."
        ),
    )
    embedding_max_wait_ms: float = Field(
        default=0.0, ge=0, description="How long the first queued text waits for company."
    )
    embedding_max_texts_per_request: int = Field(
        default=1024, ge=1, description="Most texts accepted in one Embed call."
    )
    embedding_cache_enabled: bool = Field(
        default=True,
        description="Keep vectors by (model, kind, text hash) so a text is embedded once.",
    )
    embedding_cache_ttl_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="How long a cached vector is kept (it never goes stale for one model).",
    )
    embedding_prices: dict[str, InputPrice] = Field(
        default=DEFAULT_EMBEDDING_PRICES,
        validate_default=True,
        description=(
            'USD per 1M input tokens per remote embedding model, JSON: {"gemini-embedding-001": '
            '{"input": 0.15}}; models without a price cost 0.'
        ),
    )
    vertex_embedding_model: Literal["text-embedding-005", "gemini-embedding-001"] = Field(
        default="text-embedding-005", description="Vertex AI embedding model (backend vertex)."
    )
    vertex_embedding_dimension: int = Field(
        default=768,
        ge=1,
        description=(
            "Vector size asked of Vertex AI (output_dimensionality): at most 768 for "
            "text-embedding-005, 3072 for gemini-embedding-001."
        ),
    )
    vertex_embedding_max_texts_per_request: int = Field(
        default=0,
        ge=0,
        description=(
            "Most texts in one Vertex AI request; 0 = the model's documented limit "
            "(250 for text-embedding-005, 1 for gemini-embedding-001)."
        ),
    )
    vertex_embedding_max_tokens_per_request: int = Field(
        default=0,
        ge=0,
        description=(
            "Most tokens (by the upper bound clients count) in one Vertex AI request; "
            "0 = the model's documented limit (20000)."
        ),
    )
    vertex_embedding_concurrency: int = Field(
        default=8, ge=1, description="Vertex AI embedding requests in flight at once (the quota)."
    )
    vertex_embedding_base_url: str = Field(
        default="", description="Override of the Vertex AI endpoint (a proxy or a test fake)."
    )
    vertex_embedding_access_token: SecretStr = Field(
        default=SecretStr(""),
        description="Static OAuth token for Vertex AI; empty uses Application Default Credentials.",
    )
    vertex_embedding_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Deadline of one Vertex AI embedding request."
    )
    vertex_embedding_max_attempts: int = Field(
        default=6,
        ge=1,
        description="Attempts of a Vertex AI request answered 429 or 503, the first included.",
    )
    vertex_embedding_backoff_seconds: float = Field(
        default=0.5,
        ge=0,
        description=(
            "Backoff before retry n: uniform(0, min(RAG_VERTEX_EMBEDDING_BACKOFF_MAX_SECONDS, "
            "this x 2^n)) (full jitter)."
        ),
    )
    vertex_embedding_backoff_max_seconds: float = Field(
        default=8.0, ge=0, description="Longest backoff between two attempts of a request."
    )

    @model_validator(mode="after")
    def _vertex_needs_a_project(self) -> Self:
        if self.embedding_backend == "vertex" and not self.gcp_project:
            raise ValueError("RAG_EMBEDDING_BACKEND=vertex needs RAG_GCP_PROJECT")
        return self


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    """The configured embedder."""
    if settings.embedding_backend == "vertex":
        return build_vertex_embedder(settings)
    return SentenceTransformerEmbedder.packaged_minilm(
        settings.embedding_device, settings.embedding_threads
    )


def build_vertex_embedder(settings: EmbeddingSettings) -> "VertexEmbedder":
    """The Vertex AI embedder the settings describe (the SDK is imported only for it)."""
    import google.oauth2.credentials

    from services.embedding.vertex import Backoff, VertexEmbedder

    token = settings.vertex_embedding_access_token.get_secret_value()
    return VertexEmbedder(
        model=settings.vertex_embedding_model,
        dimension=settings.vertex_embedding_dimension,
        project=settings.gcp_project,
        location=settings.gcp_location,
        prices=PriceTable(settings.embedding_prices, "RAG_EMBEDDING_PRICES"),
        max_texts_per_request=settings.vertex_embedding_max_texts_per_request,
        max_tokens_per_request=settings.vertex_embedding_max_tokens_per_request,
        concurrency=settings.vertex_embedding_concurrency,
        timeout_seconds=settings.vertex_embedding_timeout_seconds,
        base_url=settings.vertex_embedding_base_url,
        credentials=google.oauth2.credentials.Credentials(token=token) if token else None,  # type: ignore[no-untyped-call]
        backoff=Backoff(
            attempts=settings.vertex_embedding_max_attempts,
            base_seconds=settings.vertex_embedding_backoff_seconds,
            cap_seconds=settings.vertex_embedding_backoff_max_seconds,
        ),
    )


def main() -> None:
    settings = EmbeddingSettings()

    async def build() -> Service:
        embedder = build_embedder(settings)

        def record_batch(stats: BatchStats) -> None:
            BATCH_SIZE.observe(stats.size)
            QUEUE_WAIT.observe(stats.queue_wait_seconds)
            QUEUE_DEPTH.set(batcher.queued_texts)

        batcher = MicroBatcher(
            embedder.embed,
            settings.embedding_max_batch,
            settings.embedding_max_wait_ms / 1000,
            on_batch=record_batch,
        )
        cleanups: list[Callable[[], Awaitable[None]]] = [
            batcher.close,
            lambda: asyncio.to_thread(embedder.close),
        ]
        cache = None
        if settings.embedding_cache_enabled:
            store = build_cache(settings, "embedding")
            cleanups.append(store.close)
            cache = VectorCache(
                store,
                embedder.model_name,
                embedder.dimension,
                settings.embedding_cache_ttl_seconds,
            )
        servicer = EmbeddingServicer(
            embedder, batcher, settings.embedding_max_texts_per_request, cache
        )
        binding = ServiceBinding(
            embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
            servicer,
            embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
        )
        return Service([binding], cleanups=cleanups)

    run("embedding", settings, build)


if __name__ == "__main__":
    main()
