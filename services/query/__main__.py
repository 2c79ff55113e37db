"""Run the query service: `python -m services.query`."""

from pydantic import Field

from ragplatform.v1 import debug_pb2, debug_pb2_grpc, query_pb2, query_pb2_grpc
from services.query.debug import RequestDebugServicer, RequestLog
from services.query.pipeline import QueryLimits, QueryPipeline
from services.query.servicer import QueryServicer
from services.runtime.clients import PlatformClients
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings


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


def main() -> None:
    settings = QuerySettings()

    async def build() -> Service:
        clients = PlatformClients(settings)
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
        bindings = [
            ServiceBinding(
                query_pb2_grpc.add_QueryServiceServicer_to_server,
                QueryServicer(QueryPipeline(clients, limits), requests),
                query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
            ),
            ServiceBinding(
                debug_pb2_grpc.add_RequestDebugServiceServicer_to_server,
                RequestDebugServicer(requests, clients),
                debug_pb2.DESCRIPTOR.services_by_name["RequestDebugService"].full_name,
            ),
        ]
        return Service(bindings, cleanups=[clients.close])

    run("query", settings, build)


if __name__ == "__main__":
    main()
