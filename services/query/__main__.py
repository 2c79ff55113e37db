"""Run the query service: `python -m services.query`."""

from pydantic import Field

from ragplatform.v1 import query_pb2, query_pb2_grpc
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


def main() -> None:
    settings = QuerySettings()

    async def build() -> Service:
        clients = PlatformClients(settings)
        limits = QueryLimits(
            default_top_k=settings.query_default_top_k,
            max_top_k=settings.query_max_top_k,
            max_question_chars=settings.query_max_question_chars,
        )
        binding = ServiceBinding(
            query_pb2_grpc.add_QueryServiceServicer_to_server,
            QueryServicer(QueryPipeline(clients, limits)),
            query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
        )
        return Service([binding], cleanups=[clients.close])

    run("query", settings, build)


if __name__ == "__main__":
    main()
