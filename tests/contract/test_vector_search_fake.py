"""The Vector Search fake, checked through the real ``aiplatform_v1`` REST
clients: what a store built on them sees is what these tests pin down (see the
fake's docstring for where each behaviour comes from)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.types import IndexDatapoint

from tests.contract.fakes.server import serve
from tests.contract.fakes.vector_search_fake import (
    FIND_NEIGHBORS,
    READ_DATAPOINTS,
    REMOVE,
    RRF_K,
    UPSERT,
    VectorSearchFake,
)

INDEX = "projects/rag-test/locations/us-central1/indexes/chunks"
ENDPOINT = "projects/rag-test/locations/us-central1/indexEndpoints/rag"
DEPLOYED = "chunks_v1"

Restricts = dict[str, Sequence[str]]
Op = IndexDatapoint.NumericRestriction.Operator


@dataclass
class Served:
    fake: VectorSearchFake
    url: str
    indexes: aiplatform_v1.IndexServiceClient
    matches: aiplatform_v1.MatchServiceClient


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    fake = VectorSearchFake()
    with serve(fake.app) as url:
        # The scheme stays: without it the REST transport would speak https.
        options = {"api_endpoint": url}
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        yield Served(
            fake,
            url,
            aiplatform_v1.IndexServiceClient(
                transport="rest", client_options=options, credentials=credentials
            ),
            aiplatform_v1.MatchServiceClient(
                transport="rest", client_options=options, credentials=credentials
            ),
        )


@pytest.fixture
def vs(served: Served) -> Served:
    """A fresh fake with one 3-dimensional dot-product index deployed."""
    served.fake.reset()
    served.fake.create_index(INDEX, 3)
    served.fake.deploy_index(ENDPOINT, DEPLOYED, INDEX)
    return served


def point(
    key: str,
    vector: Sequence[float] = (),
    *,
    sparse: dict[int, float] | None = None,
    allow: Restricts | None = None,
    deny: Restricts | None = None,
    numbers: dict[str, Any] | None = None,
    crowd: str = "",
) -> IndexDatapoint:
    """A datapoint; `numbers` maps a namespace to ("value_int" | "value_float" |
    "value_double", value) or, in a query, to (kind, value, op)."""
    namespaces = sorted({*(allow or {}), *(deny or {})})
    datapoint = IndexDatapoint(
        datapoint_id=key,
        feature_vector=list(vector),
        restricts=[
            IndexDatapoint.Restriction(
                namespace=ns,
                allow_list=list((allow or {}).get(ns, ())),
                deny_list=list((deny or {}).get(ns, ())),
            )
            for ns in namespaces
        ],
    )
    if sparse:
        datapoint.sparse_embedding = IndexDatapoint.SparseEmbedding(
            dimensions=list(sparse), values=list(sparse.values())
        )
    for ns, spec in (numbers or {}).items():
        restrict = IndexDatapoint.NumericRestriction(namespace=ns, **{spec[0]: spec[1]})
        if len(spec) == 3:
            restrict.op = spec[2]
        datapoint.numeric_restricts.append(restrict)
    if crowd:
        datapoint.crowding_tag = IndexDatapoint.CrowdingTag(crowding_attribute=crowd)
    return datapoint


def upsert(vs: Served, *datapoints: IndexDatapoint) -> None:
    vs.indexes.upsert_datapoints(
        request=aiplatform_v1.UpsertDatapointsRequest(index=INDEX, datapoints=list(datapoints))
    )


def query(datapoint: IndexDatapoint, count: int = 10, **fields: Any) -> Any:
    return aiplatform_v1.FindNeighborsRequest.Query(
        datapoint=datapoint, neighbor_count=count, **fields
    )


def find(vs: Served, *queries: Any, full: bool = False) -> Any:
    return vs.matches.find_neighbors(
        request=aiplatform_v1.FindNeighborsRequest(
            index_endpoint=ENDPOINT,
            deployed_index_id=DEPLOYED,
            queries=list(queries),
            return_full_datapoint=full,
        )
    )


def ids(vs: Served, datapoint: IndexDatapoint, count: int = 10, **fields: Any) -> list[str]:
    response = find(vs, query(datapoint, count, **fields))
    return [n.datapoint.datapoint_id for n in response.nearest_neighbors[0].neighbors]


def test_exact_nearest_neighbours_by_dot_product(vs: Served) -> None:
    vectors = {
        "a": (1, 0, 0),
        "b": (0.9, 0.1, 0),
        "c": (0, 1, 0),
        "d": (-1, 0, 0),
        "e": (0.5, 0.5, 0.5),
    }
    upsert(vs, *(point(k, v) for k, v in vectors.items()))
    q = (0.8, 0.3, 0.1)
    response = find(vs, query(point("q", q), count=4))
    (answer,) = response.nearest_neighbors
    assert answer.id == "q"
    dots = {k: sum(x * y for x, y in zip(v, q, strict=True)) for k, v in vectors.items()}
    expected = sorted(dots, key=lambda k: -dots[k])[:4]
    assert [n.datapoint.datapoint_id for n in answer.neighbors] == expected
    for neighbor in answer.neighbors:  # the dot product itself, larger is closer
        assert neighbor.distance == pytest.approx(dots[neighbor.datapoint.datapoint_id], rel=1e-6)
        assert neighbor.sparse_distance == 0
        assert not neighbor.datapoint.feature_vector  # not asked for the full datapoint


def test_cosine_index_reports_the_cosine_similarity(vs: Served) -> None:
    vs.fake.create_index(INDEX, 2, distance="COSINE_DISTANCE")
    upsert(vs, point("long", (10, 0)), point("diagonal", (1, 1)))
    response = find(vs, query(point("q", (1, 0))))
    got = {n.datapoint.datapoint_id: n.distance for n in response.nearest_neighbors[0].neighbors}
    assert list(got) == ["long", "diagonal"]
    assert got["long"] == pytest.approx(1.0)
    assert got["diagonal"] == pytest.approx(1 / math.sqrt(2))


def test_upsert_replaces_remove_forgets_read_returns_stored(vs: Served) -> None:
    upsert(vs, point("a", (1, 0, 0), allow={"doc": ["d1"]}), point("b", (0, 1, 0)))
    upsert(vs, point("a", (0, 0, 1), allow={"doc": ["d2"]}))
    assert vs.fake.datapoints(INDEX)["a"]["featureVector"] == [0, 0, 1]
    vs.indexes.remove_datapoints(
        request=aiplatform_v1.RemoveDatapointsRequest(
            index=INDEX, datapoint_ids=["b", "never-there"]
        )
    )
    read = vs.matches.read_index_datapoints(
        request=aiplatform_v1.ReadIndexDatapointsRequest(
            index_endpoint=ENDPOINT, deployed_index_id=DEPLOYED, ids=["b", "a", "unknown"]
        )
    )
    (a,) = read.datapoints
    assert a.datapoint_id == "a"
    assert list(a.feature_vector) == [0, 0, 1]
    assert a.restricts[0].allow_list == ["d2"]
    assert ids(vs, point("q", (1, 1, 1))) == ["a"]
    assert [c.operation for c in vs.fake.calls()] == [
        UPSERT,
        UPSERT,
        REMOVE,
        READ_DATAPOINTS,
        FIND_NEIGHBORS,
    ]


def test_all_restricts_mask_keeps_the_vector(vs: Served) -> None:
    upsert(vs, point("a", (1, 2, 3), allow={"state": ["live"]}))
    vs.indexes.upsert_datapoints(
        request=aiplatform_v1.UpsertDatapointsRequest(
            index=INDEX,
            datapoints=[point("a", allow={"state": ["retired"]})],
            update_mask={"paths": ["all_restricts"]},
        )
    )
    stored = vs.fake.datapoints(INDEX)["a"]
    assert stored["featureVector"] == [1, 2, 3]
    assert stored["restricts"] == [{"namespace": "state", "allowList": ["retired"]}]


def test_wrong_dimension_is_invalid_argument_and_changes_nothing(vs: Served) -> None:
    with pytest.raises(exceptions.BadRequest) as caught:
        upsert(vs, point("ok", (1, 0, 0)), point("short", (1, 0)))
    assert (
        "Incorrect dimensionality. Expected 3, got 2. Datapoint ID: short." in caught.value.message
    )
    assert vs.fake.datapoints(INDEX) == {}
    with pytest.raises(exceptions.BadRequest, match="dimensionality"):
        find(vs, query(point("q", (1, 0, 0, 0))))
    with pytest.raises(exceptions.BadRequest, match="op must not be set"):
        upsert(vs, point("n", (1, 0, 0), numbers={"price": ("value_int", 3, Op.LESS)}))


def test_batch_index_and_unknown_resources(vs: Served) -> None:
    vs.fake.create_index(INDEX, 3, update_method="BATCH_UPDATE")
    with pytest.raises(exceptions.BadRequest, match="StreamUpdate is not enabled"):
        upsert(vs, point("a", (1, 0, 0)))
    with pytest.raises(exceptions.NotFound):
        vs.matches.find_neighbors(
            request=aiplatform_v1.FindNeighborsRequest(
                index_endpoint=ENDPOINT,
                deployed_index_id="nope",
                queries=[query(point("q", (1, 0, 0)))],
            )
        )


def test_token_restricts_follow_googles_allow_and_deny_table(vs: Served) -> None:
    """The data points of Google's filtering page ("Denylist")."""
    table: dict[str, tuple[list[str], list[str]]] = {
        "A": ([], []),
        "B": (["red"], []),
        "C": (["blue"], []),
        "D": (["orange"], []),
        "E": (["red", "blue"], []),
        "F": (["red"], ["blue"]),
        "G": (["red", "blue"], ["blue"]),
        "H": ([], ["blue"]),
    }
    upsert(
        vs,
        *(
            point(k, (1, 0, 0), allow={"color": a} if a else None, deny={"color": d} if d else None)
            for k, (a, d) in table.items()
        ),
    )

    def matching(allow: Sequence[str], deny: Sequence[str] = ()) -> str:
        q = point(
            "q",
            (1, 0, 0),
            allow={"color": allow} if allow else None,
            deny={"color": deny} if deny else None,
        )
        return "".join(ids(vs, q))

    assert matching([]) == "ABCDEFGH"  # an empty query namespace matches everything
    assert matching(["red"]) == "BEFG"  # A: an empty datapoint namespace is no wildcard
    assert matching(["blue"]) == "CE"  # F and G deny blue
    assert matching(["red", "blue"]) == "BCE"  # OR within the namespace; F, G deny blue
    assert matching([], ["blue"]) == "ABDFH"  # deny-only: all but what has blue
    assert matching(["red"], ["blue"]) == "BF"


def test_token_namespaces_are_anded(vs: Served) -> None:
    upsert(
        vs,
        point("red-square", (1, 0, 0), allow={"color": ["red"], "shape": ["square"]}),
        point("red-circle", (1, 0, 0), allow={"color": ["red"], "shape": ["circle"]}),
        point("blue-square", (1, 0, 0), allow={"color": ["blue"], "shape": ["square"]}),
        point("red", (1, 0, 0), allow={"color": ["red"]}),
    )
    both = point("q", (1, 0, 0), allow={"color": ["red", "blue"], "shape": ["square"]})
    assert ids(vs, both) == ["blue-square", "red-square"]
    assert ids(vs, point("q", (1, 0, 0), allow={"color": ["red"]})) == [
        "red",
        "red-circle",
        "red-square",
    ]


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (Op.LESS, ["p10"]),
        (Op.LESS_EQUAL, ["p10", "p20"]),
        (Op.EQUAL, ["p20"]),
        (Op.GREATER_EQUAL, ["p20", "p30"]),
        (Op.GREATER, ["p30"]),
        (Op.NOT_EQUAL, ["p10", "p30"]),
    ],
)
@pytest.mark.parametrize("kind", ["value_int", "value_float", "value_double"])
def test_numeric_restricts(vs: Served, op: Op, expected: list[str], kind: str) -> None:
    upsert(
        vs,
        *(point(f"p{v}", (1, 0, 0), numbers={"price": (kind, v)}) for v in (10, 20, 30)),
        point("no-price", (1, 0, 0)),
        point(
            "other-type",
            (1, 0, 0),
            numbers={"price": ("value_int" if kind != "value_int" else "value_double", 20)},
        ),
    )
    assert ids(vs, point("q", (1, 0, 0), numbers={"price": (kind, 20, op)})) == expected


def test_numeric_restricts_are_anded_with_tokens(vs: Served) -> None:
    upsert(
        vs,
        point(
            "cheap-red", (1, 0, 0), allow={"color": ["red"]}, numbers={"price": ("value_int", 5)}
        ),
        point(
            "dear-red", (1, 0, 0), allow={"color": ["red"]}, numbers={"price": ("value_int", 50)}
        ),
        point(
            "cheap-blue", (1, 0, 0), allow={"color": ["blue"]}, numbers={"price": ("value_int", 5)}
        ),
    )
    q = point(
        "q", (1, 0, 0), allow={"color": ["red"]}, numbers={"price": ("value_int", 10, Op.LESS)}
    )
    assert ids(vs, q) == ["cheap-red"]


def test_sparse_only_query_ranks_by_sparse_dot_product(vs: Served) -> None:
    upsert(
        vs,
        point("one-term", (1, 0, 0), sparse={7: 1.0}),
        point("two-terms", (0, 1, 0), sparse={7: 0.5, 9: 2.0}),
        point("unrelated", (0, 0, 1), sparse={3: 5.0}),
        point("dense-only", (1, 1, 1)),
    )
    response = find(vs, query(point("q", sparse={7: 1.0, 9: 1.0})))
    got = [
        (n.datapoint.datapoint_id, n.sparse_distance, n.distance)
        for n in response.nearest_neighbors[0].neighbors
    ]
    assert got == [("two-terms", pytest.approx(2.5), 0), ("one-term", pytest.approx(1.0), 0)]


def test_hybrid_query_fuses_by_rrf_with_alpha(vs: Served) -> None:
    # Dense order: d1 d2 d3 s1; sparse order: s1 s2 d3 (d1, d2 share no dimension).
    upsert(
        vs,
        point("d1", (1, 0, 0)),
        point("d2", (0.8, 0, 0)),
        point("d3", (0.6, 0, 0), sparse={1: 0.1}),
        point("s1", (0.1, 0, 0), sparse={1: 3.0}),
        point("s2", sparse={1: 2.0}),  # sparse only: no dense rank
    )
    hybrid = point("q", (1, 0, 0), sparse={1: 1.0})

    def rrf(alpha: float) -> list[str]:
        score: dict[str, float] = {}
        for rank, key in enumerate(["d1", "d2", "d3", "s1"], start=1):
            score[key] = score.get(key, 0.0) + alpha / (RRF_K + rank)
        for rank, key in enumerate(["s1", "s2", "d3"], start=1):
            score[key] = score.get(key, 0.0) + (1 - alpha) / (RRF_K + rank)
        return sorted((k for k in score if score[k] > 0), key=lambda k: (-score[k], k))

    # In both rankings beats first in one; d2 and s2 tie (1/62 each): by id.
    assert ids(vs, hybrid, rrf={"alpha": 0.5}) == ["s1", "d3", "d1", "d2", "s2"]
    for alpha in (0.5, 0.3, 0.9):
        assert ids(vs, hybrid, rrf={"alpha": alpha}) == rrf(alpha)
    assert ids(vs, hybrid, rrf={"alpha": 1.0}) == ["d1", "d2", "d3", "s1"]  # dense only
    assert ids(vs, hybrid, rrf={"alpha": 0.0}) == ["s1", "s2", "d3"]  # sparse only
    response = find(vs, query(hybrid, rrf={"alpha": 0.5}))
    by_id = {n.datapoint.datapoint_id: n for n in response.nearest_neighbors[0].neighbors}
    assert by_id["s1"].distance == pytest.approx(0.1)
    assert by_id["s1"].sparse_distance == pytest.approx(3.0)
    assert by_id["s2"].distance == 0 and by_id["s2"].sparse_distance == pytest.approx(2.0)


def test_neighbor_count_full_datapoint_and_several_queries(vs: Served) -> None:
    full = point(
        "a",
        (1, 0, 0),
        sparse={4: 0.5},
        allow={"doc": ["d1"]},
        deny={"tenant": ["t9"]},
        numbers={"version": ("value_int", 3)},
        crowd="d1",
    )
    upsert(vs, full, point("b", (0, 1, 0)), point("c", (0, 0, 1)))
    response = find(
        vs,
        query(point("q1", (1, 0, 0)), count=1),
        query(point("q2", (0, 0, 1)), count=2),
        full=True,
    )
    first, second = response.nearest_neighbors
    assert (first.id, second.id) == ("q1", "q2")
    assert len(first.neighbors) == 1 and len(second.neighbors) == 2
    assert second.neighbors[0].datapoint.datapoint_id == "c"
    assert IndexDatapoint.to_dict(first.neighbors[0].datapoint) == IndexDatapoint.to_dict(full)
    bare = (
        find(vs, query(point("q", (1, 0, 0)), count=1)).nearest_neighbors[0].neighbors[0].datapoint
    )
    assert bare.datapoint_id == "a"
    assert bare.crowding_tag.crowding_attribute == "d1"  # the id and the crowding tag only
    assert not bare.feature_vector and not bare.restricts and not bare.numeric_restricts
    assert not bare.sparse_embedding.values


def test_per_crowding_attribute_neighbor_count(vs: Served) -> None:
    upsert(
        vs,
        point("d1-a", (1, 0, 0), crowd="d1"),
        point("d1-b", (0.9, 0, 0), crowd="d1"),
        point("d2-a", (0.5, 0, 0), crowd="d2"),
    )
    crowded = ids(vs, point("q", (1, 0, 0)), per_crowding_attribute_neighbor_count=1)
    assert crowded == ["d1-a", "d2-a"]


def test_scripted_faults_per_operation(vs: Served) -> None:
    upsert(vs, point("a", (1, 0, 0)))
    vs.fake.fail(UPSERT, 503, times=None)  # Vector Search unavailable during a replace
    with pytest.raises(exceptions.ServiceUnavailable):
        upsert(vs, point("b", (1, 0, 0)))
    with pytest.raises(exceptions.ServiceUnavailable):
        vs.indexes.upsert_datapoints(
            request={"index": INDEX, "datapoints": [point("b", (1, 0, 0))]}
        )
    assert ids(vs, point("q", (1, 0, 0))) == ["a"]  # queries still work
    vs.fake.clear_faults()
    vs.fake.fail(FIND_NEIGHBORS, 429)
    vs.fake.fail(FIND_NEIGHBORS, 400, message="bad query")
    with pytest.raises(exceptions.TooManyRequests):  # REST: by HTTP status, not ResourceExhausted
        find(vs, query(point("q", (1, 0, 0))))
    with pytest.raises(exceptions.BadRequest, match="bad query"):
        find(vs, query(point("q", (1, 0, 0))))
    assert ids(vs, point("q", (1, 0, 0))) == ["a"]  # the faults were used up
    statuses = [(c.operation, c.status) for c in vs.fake.calls()]
    assert statuses == [
        (UPSERT, 200),
        (UPSERT, 503),
        (UPSERT, 503),
        (FIND_NEIGHBORS, 200),
        (FIND_NEIGHBORS, 429),
        (FIND_NEIGHBORS, 400),
        (FIND_NEIGHBORS, 200),
    ]
    assert vs.fake.calls(UPSERT)[1].body["datapoints"][0]["datapointId"] == "b"


def test_unavailable_switch_and_googles_error_body(vs: Served) -> None:
    vs.fake.unavailable = True
    with pytest.raises(exceptions.ServiceUnavailable):
        find(vs, query(point("q", (1, 0, 0))))
    with pytest.raises(exceptions.ServiceUnavailable):
        vs.indexes.remove_datapoints(request={"index": INDEX, "datapoint_ids": ["a"]})
    raw = httpx.post(f"{vs.url}/v1/{INDEX}:upsertDatapoints", json={"datapoints": []})
    assert raw.status_code == 503
    assert raw.json() == {
        "error": {
            "code": 503,
            "message": "The service is currently unavailable.",
            "status": "UNAVAILABLE",
        }
    }
    vs.fake.unavailable = False
    upsert(vs, point("a", (1, 0, 0)))
    unknown = httpx.post(
        f"{vs.url}/v1/{INDEX}:upsertDatapoints", json={"datapoints": [], "bogus": 1}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_concurrent_clients(vs: Served) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                upsert(vs, point(f"{n}-{i}", (n, i, 1)))
                ids(vs, point("q", (1, 1, 1)), count=3)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(vs.fake.datapoints(INDEX)) == 40
    assert len(vs.fake.calls(UPSERT)) == len(vs.fake.calls(FIND_NEIGHBORS)) == 40
