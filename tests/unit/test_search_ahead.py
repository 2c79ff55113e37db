"""RetrievalService.SearchAhead over real gRPC: the search, then its vector;
the results equal Search's, and a stream out of order is INVALID_ARGUMENT.

The servicer runs on an in-process aio server with the runtime's error mapping,
in front of a real embedded store holding the synthetic parity corpus.
"""

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from ragplatform.v1 import common_pb2, embedding_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.edge import EdgeVectorStore
from services.retrieval.servicer import RetrievalServicer
from services.runtime.errors import ErrorMappingInterceptor
from tests.unit.test_store_qdrant import PARITY_DIM, parity_queries, synthetic_corpus


@dataclass
class Served:
    stub: retrieval_pb2_grpc.RetrievalServiceStub


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    store = EdgeVectorStore.open(tmp_path_factory.mktemp("edge") / "index", PARITY_DIM)
    for document in synthetic_corpus():
        store.replace_document(*document)
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    port = server.add_insecure_port("127.0.0.1:0")
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(store), server)
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(retrieval_pb2_grpc.RetrievalServiceStub(channel))
    await server.stop(None)
    store.close()


def request(text: str, mode: int, **fields: object) -> retrieval_pb2.SearchRequest:
    return retrieval_pb2.SearchRequest(
        top_k=5,
        query_text=text,
        mode=mode,  # type: ignore[arg-type]
        caller=common_pb2.Caller(tenant="acme", access_labels=["hr"]),
        **fields,  # type: ignore[arg-type]
    )


async def ahead(
    served: Served, steps: Sequence[retrieval_pb2.SearchAheadRequest]
) -> retrieval_pb2.SearchAheadResponse:
    call = served.stub.SearchAhead()
    for step in steps:
        await call.write(step)
    await call.done_writing()
    response: retrieval_pb2.SearchAheadResponse = await call
    return response


MODES = [
    common_pb2.RETRIEVAL_MODE_HYBRID,
    common_pb2.RETRIEVAL_MODE_DENSE,
    common_pb2.RETRIEVAL_MODE_KEYWORD,
    common_pb2.RETRIEVAL_MODE_UNSPECIFIED,
]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("mode", MODES)
async def test_search_ahead_returns_what_search_returns(served: Served, mode: int) -> None:
    found = 0
    for vector, text in parity_queries(synthetic_corpus(), 15):
        values = embedding_pb2.Vector(values=vector)
        steps = [
            retrieval_pb2.SearchAheadRequest(search=request(text, mode)),
            retrieval_pb2.SearchAheadRequest(vector=values),
        ]
        expected = await served.stub.Search(request(text, mode, vector=values))
        assert list((await ahead(served, steps)).results) == list(expected.results)
        found += len(expected.results)
    assert found > 0


VECTOR = retrieval_pb2.SearchAheadRequest(vector=embedding_pb2.Vector(values=[1.0] * PARITY_DIM))
SEARCH = retrieval_pb2.SearchAheadRequest(
    search=request("policy", common_pb2.RETRIEVAL_MODE_HYBRID)
)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "must begin with its search"),
        ([VECTOR, SEARCH], "must begin with its search"),
        ([SEARCH], "the second message of a SearchAhead stream is the vector"),
        ([SEARCH, SEARCH], "the second message of a SearchAhead stream is the vector"),
        ([SEARCH, VECTOR, VECTOR], "ends after its vector"),
        (
            [
                retrieval_pb2.SearchAheadRequest(
                    search=request("x", common_pb2.RETRIEVAL_MODE_HYBRID, vector=VECTOR.vector)
                ),
                VECTOR,
            ],
            "search.vector must be empty",
        ),
        (
            [
                retrieval_pb2.SearchAheadRequest(
                    search=retrieval_pb2.SearchRequest(top_k=5, query_text="policy")
                ),
                VECTOR,
            ],
            "tenant is missing",
        ),
    ],
)
async def test_a_stream_out_of_order_is_invalid(
    served: Served, steps: list[retrieval_pb2.SearchAheadRequest], message: str
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await ahead(served, steps)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raised.value.details() or "")
