"""Run the query service: `python -m services.query`."""

from collections.abc import Awaitable, Callable

from pydantic import Field

from ragplatform.v1 import debug_pb2, debug_pb2_grpc, query_pb2, query_pb2_grpc
from services.query.answer_cache import EXACT_CACHE, AnswerCache, SemanticIndex
from services.query.debug import RequestDebugServicer, RequestLog
from services.query.pipeline import QueryLimits, QueryPipeline
from services.query.servicer import QueryServicer
from services.runtime.cache import build_cache
from services.runtime.clients import PlatformClients
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings
from services.runtime.startup import refuse_another_embedder


class QuerySettings(PlatformSettings):
    """Query service settings (env prefix RAG_)."""

    query_default_top_k: int = Field(default=3, ge=1, description="Chunks retrieved per question.")
    query_max_top_k: int = Field(default=20, ge=1, description="Largest top_k a caller may ask.")
    query_max_question_chars: int = Field(
        default=2000, ge=1, description="Longest question accepted, in characters."
    )
    query_debug_records: int = Field(
        default=500,
        ge=0,
        description=(
            "Recent requests kept in memory for RequestDebugService and `ragctl debug` "
            "(questions, chunks and prompts included); 0 keeps none."
        ),
    )
    query_debug_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="Age after which a request record is no longer served."
    )
    answer_cache_enabled: bool = Field(
        default=True,
        description=(
            "Serve a repeated question from the answer cache (checked against the current "
            "versions of the documents it cites)."
        ),
    )
    answer_cache_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="Longest a cached answer is served."
    )
    index_version: str = Field(
        default="",
        description=(
            "Label of the index generation, part of every answer-cache key: change it "
            "after a re-index or a generation change to retire every cached answer."
        ),
    )
    semantic_cache_enabled: bool = Field(
        default=False,
        description=(
            "Also serve the cached answer of a paraphrase: the nearest cached question "
            "of the tenant with the same settings (kept in memory per replica)."
        ),
    )
    semantic_cache_min_similarity: float = Field(
        default=0.95,
        ge=0.0,
        le=1.0,
        description="Cosine of the two questions' vectors at or above which a paraphrase matches.",
    )
    semantic_cache_max_entries: int = Field(
        default=1000, ge=1, description="Questions the semantic cache keeps per tenant (LRU)."
    )


def build_answer_cache(settings: QuerySettings, clients: PlatformClients) -> AnswerCache | None:
    """The answer cache the settings ask for, or None."""
    if not settings.answer_cache_enabled:
        return None
    semantic = (
        SemanticIndex(settings.semantic_cache_min_similarity, settings.semantic_cache_max_entries)
        if settings.semantic_cache_enabled
        else None
    )
    return AnswerCache(
        build_cache(settings, EXACT_CACHE),
        clients,
        ttl_seconds=settings.answer_cache_ttl_seconds,
        index_label=settings.index_version,
        semantic=semantic,
    )


def main() -> None:
    settings = QuerySettings()

    async def build() -> Service:
        clients = PlatformClients(settings, "query")
        await refuse_another_embedder("query", clients, settings.startup_check_seconds)
        limits = QueryLimits(
            default_top_k=settings.query_default_top_k,
            max_top_k=settings.query_max_top_k,
            max_question_chars=settings.query_max_question_chars,
        )
        requests = (
            RequestLog(settings.query_debug_records, settings.query_debug_ttl_seconds)
            if settings.query_debug_records
            else None
        )
        answers = build_answer_cache(settings, clients)
        bindings = [
            ServiceBinding(
                query_pb2_grpc.add_QueryServiceServicer_to_server,
                QueryServicer(
                    QueryPipeline(clients, limits, answers),
                    requests,
                ),
                query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
            ),
            ServiceBinding(
                debug_pb2_grpc.add_RequestDebugServiceServicer_to_server,
                RequestDebugServicer(requests, clients),
                debug_pb2.DESCRIPTOR.services_by_name["RequestDebugService"].full_name,
            ),
        ]
        cleanups: list[Callable[[], Awaitable[None]]] = [clients.close]
        if answers is not None:
            cleanups.append(answers.close)
        return Service(bindings, cleanups=cleanups)

    run("query", settings, build)


if __name__ == "__main__":
    main()
