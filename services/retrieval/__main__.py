"""Run the retrieval service: `python -m services.retrieval`."""

import asyncio
from typing import Literal

from pydantic import Field

from ragplatform.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import RetrievalMode
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings


class RetrievalSettings(PlatformSettings):
    """Retrieval service settings (env prefix RAG_)."""

    retrieval_backend: Literal["edge"] = Field(
        default="edge", description="Vector store: Qdrant's embedded engine (qdrant-edge-py)."
    )
    retrieval_dimension: int = Field(
        default=384, ge=1, description="Vector dimension; must match the embedder's."
    )
    retrieval_default_mode: RetrievalMode = Field(
        default=RetrievalMode.HYBRID,
        description="Ranking for searches that leave mode unspecified (see docs/retrieval.md).",
    )


def main() -> None:
    settings = RetrievalSettings()

    async def build() -> Service:
        store = EdgeVectorStore.open(settings.data_dir / "index", settings.retrieval_dimension)
        binding = ServiceBinding(
            retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
            RetrievalServicer(store, settings.retrieval_default_mode),
            retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
        )

        async def close() -> None:
            await asyncio.to_thread(store.close)

        return Service([binding], cleanups=[close])

    run("retrieval", settings, build)


if __name__ == "__main__":
    main()
