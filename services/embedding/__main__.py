"""Run the embedding service: `python -m services.embedding`."""

from collections.abc import Awaitable, Callable
from typing import Literal

from prometheus_client import Gauge, Histogram
from pydantic import Field

from ragplatform.v1 import embedding_pb2, embedding_pb2_grpc
from services.embedding.backends import Embedder, SentenceTransformerEmbedder
from services.embedding.batcher import BatchStats, MicroBatcher
from services.embedding.servicer import EmbeddingServicer
from services.embedding.vector_cache import VectorCache
from services.runtime.cache import build_cache
from services.runtime.metrics import LATENCY_BUCKETS
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings

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


class EmbeddingSettings(PlatformSettings):
    """Embedding service settings (env prefix RAG_)."""

    embedding_backend: Literal["minilm"] = Field(
        default="minilm", description="Embedder: the packaged all-MiniLM-L6-v2."
    )
    embedding_device: str = Field(default="cpu", description="torch device for local models.")
    embedding_threads: int = Field(default=0, ge=0, description="torch threads; 0 = all cores.")
    embedding_max_batch: int = Field(default=32, ge=1, description="Texts per model call.")
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


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    """The configured embedder."""
    return SentenceTransformerEmbedder.packaged_minilm(
        settings.embedding_device, settings.embedding_threads
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
        cleanups: list[Callable[[], Awaitable[None]]] = [batcher.close]
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
