"""A fake of Vertex AI Vector Search's REST API: stream-updated indexes, public
index endpoints, exact nearest neighbours.

What it serves is what ``google.cloud.aiplatform_v1``'s REST transport sends
(``IndexServiceClient`` / ``MatchServiceClient`` with ``transport="rest"``;
``aiplatform_v1/services/*/transports/rest_base.py``)::

    POST /v1/{index=projects/*/locations/*/indexes/*}:upsertDatapoints
    POST /v1/{index=projects/*/locations/*/indexes/*}:removeDatapoints
    POST /v1/{index_endpoint=projects/*/locations/*/indexEndpoints/*}:findNeighbors
    POST /v1/{index_endpoint=projects/*/locations/*/indexEndpoints/*}:readIndexDatapoints

The SDK adds ``?$alt=json;enum-encoding=int``: enums arrive as numbers
(``"op": 1``), int64 as strings (``"valueInt": "5"``, sparse ``dimensions``),
field names in camelCase. The fake parses each body with the request's own
protobuf message (``json_format``, unknown fields rejected, as Google's front
end does) and writes its answers from the response messages: the JSON is the
one the real service sends, whatever spelling the client used.

Clients reach it with ``client_options={"api_endpoint": "http://127.0.0.1:PORT"}``
(the URL :func:`tests.contract.fakes.server.serve` yields): the REST transport
keeps a scheme given in the host and only adds ``https://`` to a bare
``host:port``. ``credentials=AnonymousCredentials()``; there are no retries by
default on these four methods (``transports/base.py``: no ``default_retry``).

The fake's Python API (:class:`VectorSearchFake`): ``create_index(name,
dimensions, distance=..., update_method=...)``, ``deploy_index(endpoint,
deployed_index_id, index)``, ``datapoints(index)``; faults with ``fail(operation,
status, times)`` and the ``unavailable`` switch; ``calls(operation)``, the
recorded requests; ``reset()``.

Semantics, from Google's documentation where it says; the fake's own choices
(marked *fake*) where it does not:

* **Upsert** replaces a datapoint with the same id. Every datapoint of the
  request is checked before any is stored: a dense vector whose length is not
  the index's dimensions is ``400 INVALID_ARGUMENT`` ("Incorrect dimensionality.
  Expected 3, got 2. Datapoint ID: a."); a datapoint with neither a dense nor a
  sparse embedding, a sparse embedding whose ``values`` and ``dimensions``
  differ in length, or a numeric restrict with an ``op`` ("specifying this for
  a datapoint is an error", ``IndexDatapoint.NumericRestriction.Operator``) are
  400 as well. An index created with ``update_method="BATCH_UPDATE"`` answers
  ``400 FAILED_PRECONDITION`` ("StreamUpdate is not enabled on this Index.").
  ``update_mask`` ``all_restricts`` (the only updatable path) replaces the
  restricts of stored datapoints and keeps their vectors; *fake*: an id not
  stored is then 400 (Google does not say). **Remove** by ids; unknown ids are
  fine.
* **Dense distance** (``DistanceMeasureType``; the query API reports a
  similarity where larger is closer for the dot product although the enum
  defines the distance as its negative): ``DOT_PRODUCT_DISTANCE`` (default)
  reports the dot product, larger is closer. ``COSINE_DISTANCE``, which Google
  defines as 1 - cosine similarity and advises against (use
  ``DOT_PRODUCT_DISTANCE`` with ``UNIT_L2_NORM``), *fake*: reports the cosine
  similarity, larger is closer, the same convention as the dot product; what
  the online query returns for it is not documented, so a store should not
  rely on its absolute value. ``SQUARED_L2_DISTANCE`` reports the squared
  Euclidean distance, smaller is closer. The search is exact (brute force over
  every datapoint that passes the filters): the real service is approximate,
  so a test against the fake can only be stricter than production.
* **Sparse-only query** (the query datapoint has a ``sparseEmbedding`` and no
  ``featureVector``): candidates are the datapoints whose sparse embedding
  shares at least one dimension with the query's (*fake*: an inverted index
  does not retrieve the others), ranked by the sparse dot product, reported in
  ``sparseDistance`` (larger is closer).
* **Hybrid query** (both): the dense ranking and the sparse ranking, each over
  every candidate, are fused by reciprocal rank fusion with ``rrf.alpha`` (the
  dense weight; the sparse one is 1 - alpha)::

      score(d) = alpha / (RRF_K + rank_dense(d)) + (1 - alpha) / (RRF_K + rank_sparse(d))

  ranks from 1, a term left out where ``d`` is not in that ranking,
  ``RRF_K = 60`` (Cormack et al.'s constant). Google documents ``alpha`` ("if
  the alpha is 0, we only return sparse and if the alpha is 1, we only return
  dense", ``FindNeighborsRequest.Query.RRF``) but not its constant nor whether
  it fuses the full rankings or each side's top k: the fused order is the
  fake's, only "alpha 1 = dense only, alpha 0 = sparse only" is Google's.
  Candidates whose score is 0 (the side weighted 0) are left out. A hybrid
  query without ``rrf``: alpha 0.5 (*fake*). Each neighbour carries
  ``distance`` and ``sparseDistance`` where it has that embedding.
* **Token restricts** (https://cloud.google.com/vertex-ai/docs/vector-search/filtering,
  "Queries", "Denylist"): "Queries express an AND logical operator across
  namespaces and an OR logical operator within each namespace"; a query
  namespace matches a datapoint that has any of its ``allowList`` tokens; "When
  a query denylists a token, matches are excluded for any datapoint that has
  the denylisted token. If a query namespace has only denylisted tokens, all
  points not explicitly denylisted, match"; "Datapoints can also denylist a
  token, excluding matches with any query specifying that token"; "Empty query
  namespaces are match-all wildcards", but "Empty datapoint namespaces are not
  match-all wildcards. For example, Q:{color:red} doesn't match DB:{}": a
  datapoint with no token in a namespace the query allow-lists does not match.
* **Numeric restricts** (same page): ``LESS``, ``LESS_EQUAL``, ``EQUAL``,
  ``GREATER_EQUAL``, ``GREATER``, ``NOT_EQUAL`` compare the datapoint's value
  with the query's ("datapoints are eligible if their value is smaller or equal
  to the value used in the query"); several are ANDed. "Only one number type
  should be used for a given namespace": *fake*, a datapoint whose value is of
  another type than the query's (``valueInt`` against ``valueDouble``), or
  that has no value in the namespace, does not match. A query restrict without
  ``op`` is 400 ("This MUST be specified for queries").
* ``neighborCount`` (0: the index's ``default_neighbor_count``, 10);
  ``perCrowdingAttributeNeighborCount`` (at most that many neighbours per
  ``crowdingTag.crowdingAttribute``; *fake*: datapoints without a tag are not
  crowded); ``returnFullDatapoint``: the stored datapoint (vector, sparse
  embedding, restricts, numeric restricts, crowding tag, metadata), else only
  ``datapointId`` and ``crowdingTag`` (``FindNeighborsResponse.Neighbor``).
  Several queries are answered in order, each ``nearestNeighbors[i].id`` the
  query datapoint's id. Ties are broken by datapoint id.
* **readIndexDatapoints**: the stored datapoints of the ids asked for, in that
  order; unknown ids are left out.
* Unknown index, endpoint or deployed index: ``404 NOT_FOUND``. A query vector
  of the wrong length: 400.
* Upserts are visible to the next query (the real service takes seconds: a
  store must not read its own writes through a query anyway).

Errors are Google's JSON body, ``{"error": {"code": 503, "message": "...",
"status": "UNAVAILABLE"}}``. The REST transport maps them by HTTP status
(``google.api_core.exceptions.from_http_response``): 400 is ``BadRequest``,
429 ``TooManyRequests``, 503 ``ServiceUnavailable``, 404 ``NotFound``, not the
gRPC classes ``InvalidArgument`` and ``ResourceExhausted`` (their subclasses):
a store catches the HTTP ones.

Thread safety: the server runs in its own thread and event loop, the test in
another; every read or write of the fake's state holds one lock, and no
handler awaits while holding it.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.cloud.aiplatform_v1.types import index as index_types
from google.cloud.aiplatform_v1.types import index_service, match_service
from google.protobuf import json_format
from google.protobuf.message import Message

Operation = Literal["upsertDatapoints", "removeDatapoints", "findNeighbors", "readIndexDatapoints"]
UPSERT: Operation = "upsertDatapoints"
REMOVE: Operation = "removeDatapoints"
FIND_NEIGHBORS: Operation = "findNeighbors"
READ_DATAPOINTS: Operation = "readIndexDatapoints"
OPERATIONS: tuple[Operation, ...] = (UPSERT, REMOVE, FIND_NEIGHBORS, READ_DATAPOINTS)

Distance = Literal["DOT_PRODUCT_DISTANCE", "COSINE_DISTANCE", "SQUARED_L2_DISTANCE"]
UpdateMethod = Literal["STREAM_UPDATE", "BATCH_UPDATE"]
Handler = Callable[[str, dict[str, Any]], dict[str, Any]]

RRF_K = 60
"""The reciprocal rank fusion constant (Cormack, Clarke and Büttcher, 2009).
Google does not document the one Vector Search uses."""
DEFAULT_ALPHA = 0.5
"""The dense weight of a hybrid query sent without ``rrf`` (the fake's choice)."""

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    404: "The requested resource was not found.",
    429: "Quota exceeded for aiplatform.googleapis.com/online_vector_search_requests.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "The request timed out.",
}

_NumericOp = index_types.IndexDatapoint.NumericRestriction.Operator
_COMPARE = {
    _NumericOp.LESS: lambda a, b: a < b,
    _NumericOp.LESS_EQUAL: lambda a, b: a <= b,
    _NumericOp.EQUAL: lambda a, b: a == b,
    _NumericOp.GREATER_EQUAL: lambda a, b: a >= b,
    _NumericOp.GREATER: lambda a, b: a > b,
    _NumericOp.NOT_EQUAL: lambda a, b: a != b,
}


class ApiError(Exception):
    """Ends a request with Google's error body."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message, "status": self.status}}
        return JSONResponse(body, status_code=self.code)


@dataclass(frozen=True)
class Call:
    """One request the fake received (faulted ones included)."""

    operation: Operation
    resource: str
    """The index or index endpoint's resource name, from the path."""
    body: dict[str, Any]
    """The JSON body as the client sent it."""
    status: int
    """The HTTP status the fake answered."""


@dataclass
class Fault:
    """The next `times` requests of an operation fail (None: until cleared)."""

    status: int
    message: str
    times: int | None


@dataclass
class _Point:
    """A stored datapoint: its message (what reads return) and what search uses."""

    message: Any  # the raw protobuf IndexDatapoint
    dense: list[float]
    sparse: dict[int, float]
    tokens: dict[str, tuple[frozenset[str], frozenset[str]]]
    numbers: dict[str, tuple[str, float]]
    crowding: str


@dataclass
class _Index:
    name: str
    dimensions: int
    distance: Distance
    update_method: UpdateMethod
    default_neighbor_count: int
    points: dict[str, _Point]


class VectorSearchFake:
    """The fake's ASGI app (``app``) and its state; see the module docstring."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self._lock = threading.Lock()
        self._indexes: dict[str, _Index] = {}
        self._endpoints: dict[str, dict[str, str]] = {}
        self._faults: dict[Operation, deque[Fault]] = {op: deque() for op in OPERATIONS}
        self._calls: list[Call] = []
        self._unavailable = False
        self.app.post("/v1/projects/{project}/locations/{location}/indexes/{target}")(
            self._index_call
        )
        self.app.post("/v1/projects/{project}/locations/{location}/indexEndpoints/{target}")(
            self._endpoint_call
        )

    # The Python API -----------------------------------------------------------

    def create_index(
        self,
        name: str,
        dimensions: int,
        *,
        distance: Distance = "DOT_PRODUCT_DISTANCE",
        update_method: UpdateMethod = "STREAM_UPDATE",
        default_neighbor_count: int = 10,
    ) -> str:
        """Host an empty index; `name` is its resource name,
        ``projects/{p}/locations/{l}/indexes/{id}``. Returns `name`."""
        _check_name(name, "indexes")
        with self._lock:
            self._indexes[name] = _Index(
                name, dimensions, distance, update_method, default_neighbor_count, {}
            )
        return name

    def deploy_index(self, endpoint: str, deployed_index_id: str, index: str) -> None:
        """Deploy `index` on the index endpoint `endpoint`
        (``projects/{p}/locations/{l}/indexEndpoints/{id}``, created on first use)
        as `deployed_index_id`."""
        _check_name(endpoint, "indexEndpoints")
        with self._lock:
            if index not in self._indexes:
                raise KeyError(f"no index {index}: create_index first")
            self._endpoints.setdefault(endpoint, {})[deployed_index_id] = index

    def datapoints(self, index: str) -> dict[str, dict[str, Any]]:
        """The datapoints stored in `index`, by id, as the REST API writes them."""
        with self._lock:
            points = self._indexes[index].points
            return {key: _to_json(point.message) for key, point in points.items()}

    def fail(
        self,
        operation: Operation,
        status: int = 503,
        *,
        times: int | None = 1,
        message: str | None = None,
    ) -> None:
        """The next `times` requests of `operation` (None: every one until
        :meth:`clear_faults`) answer `status` with Google's error body. Faults
        queue: ``fail(UPSERT, 429); fail(UPSERT, 503)`` fails the next two."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}: one of {OPERATIONS}")
        text = message or DEFAULT_MESSAGES.get(status, f"fake error {status}")
        with self._lock:
            self._faults[operation].append(Fault(status, text, times))

    @property
    def unavailable(self) -> bool:
        """While True, every request answers 503 UNAVAILABLE."""
        with self._lock:
            return self._unavailable

    @unavailable.setter
    def unavailable(self, value: bool) -> None:
        with self._lock:
            self._unavailable = value

    def clear_faults(self) -> None:
        with self._lock:
            for faults in self._faults.values():
                faults.clear()
            self._unavailable = False

    def calls(self, operation: Operation | None = None) -> list[Call]:
        """The requests received (of `operation`), oldest first."""
        with self._lock:
            return [c for c in self._calls if operation is None or c.operation == operation]

    def reset(self) -> None:
        """No index, endpoint, fault or recorded call."""
        with self._lock:
            self._indexes.clear()
            self._endpoints.clear()
            self._calls.clear()
            self._unavailable = False
            for faults in self._faults.values():
                faults.clear()

    # HTTP ----------------------------------------------------------------------

    async def _index_call(
        self, request: Request, project: str, location: str, target: str
    ) -> Response:
        index_id, _, method = target.partition(":")
        name = f"projects/{project}/locations/{location}/indexes/{index_id}"
        handlers: dict[str, Handler] = {UPSERT: self._upsert, REMOVE: self._remove}
        return await self._dispatch(request, name, method, handlers)

    async def _endpoint_call(
        self, request: Request, project: str, location: str, target: str
    ) -> Response:
        endpoint_id, _, method = target.partition(":")
        name = f"projects/{project}/locations/{location}/indexEndpoints/{endpoint_id}"
        handlers: dict[str, Handler] = {
            FIND_NEIGHBORS: self._find_neighbors,
            READ_DATAPOINTS: self._read,
        }
        return await self._dispatch(request, name, method, handlers)

    async def _dispatch(
        self, request: Request, name: str, method: str, handlers: Mapping[str, Handler]
    ) -> Response:
        if method not in handlers:
            return ApiError(404, f"Method not found: {method}").response()
        operation: Operation = method  # type: ignore[assignment]
        body: Any
        try:
            body = await request.json()
        except ValueError:
            body = None
        with self._lock:
            try:
                if not isinstance(body, dict):
                    raise ApiError(400, "Invalid JSON payload received.")
                self._fault(operation)
                answer = handlers[method](name, body)
                response: Response = JSONResponse(answer)
            except ApiError as error:
                response = error.response()
            recorded = body if isinstance(body, dict) else {}
            self._calls.append(Call(operation, name, recorded, response.status_code))
        return response

    def _fault(self, operation: Operation) -> None:
        """Raise the scripted fault of `operation`, if any (lock held)."""
        if self._unavailable:
            raise ApiError(503, DEFAULT_MESSAGES[503])
        faults = self._faults[operation]
        if not faults:
            return
        fault = faults[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                faults.popleft()
        raise ApiError(fault.status, fault.message)

    # The operations (lock held) -------------------------------------------------

    def _index(self, name: str) -> _Index:
        if name not in self._indexes:
            raise ApiError(404, f"Index `{name}` is not found.")
        return self._indexes[name]

    def _deployed(self, endpoint: str, deployed_index_id: str) -> _Index:
        if endpoint not in self._endpoints:
            raise ApiError(404, f"IndexEndpoint `{endpoint}` is not found.")
        deployed = self._endpoints[endpoint]
        if deployed_index_id not in deployed:
            raise ApiError(
                404,
                f"DeployedIndex `{deployed_index_id}` is not found in IndexEndpoint `{endpoint}`.",
            )
        return self._index(deployed[deployed_index_id])

    def _upsert(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(body, index_service.UpsertDatapointsRequest)
        index = self._index(name)
        if index.update_method != "STREAM_UPDATE":
            raise ApiError(400, "StreamUpdate is not enabled on this Index.", "FAILED_PRECONDITION")
        paths = list(request.update_mask.paths)
        if paths and paths != ["all_restricts"]:
            raise ApiError(400, f"Unsupported update_mask paths: {paths}; only all_restricts.")
        staged: dict[str, _Point] = {}
        for message in request.datapoints:
            key = message.datapoint_id
            if not key:
                raise ApiError(400, "Datapoint ID is required.")
            if paths:  # all_restricts: new restricts on the stored vectors
                if key not in index.points:
                    raise ApiError(400, f"Datapoint ID: {key} is not found for an update_mask.")
                stored = copy.deepcopy(index.points[key].message)
                del stored.restricts[:]
                stored.restricts.extend(message.restricts)
                del stored.numeric_restricts[:]
                stored.numeric_restricts.extend(message.numeric_restricts)
                message = stored
            staged[key] = _point(message, index.dimensions)
        index.points.update(staged)
        return {}

    def _remove(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(body, index_service.RemoveDatapointsRequest)
        index = self._index(name)
        for key in request.datapoint_ids:
            index.points.pop(key, None)
        return {}

    def _read(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(body, match_service.ReadIndexDatapointsRequest)
        index = self._deployed(name, request.deployed_index_id)
        found = [index.points[key].message for key in request.ids if key in index.points]
        response = match_service.ReadIndexDatapointsResponse.pb()()
        response.datapoints.extend(found)
        return _to_json(response)

    def _find_neighbors(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(body, match_service.FindNeighborsRequest)
        index = self._deployed(name, request.deployed_index_id)
        response = match_service.FindNeighborsResponse.pb()()
        for query in request.queries:
            answer = response.nearest_neighbors.add()
            answer.id = query.datapoint.datapoint_id
            for point, dense, sparse in _search(index, query):
                neighbor = answer.neighbors.add()
                if request.return_full_datapoint:
                    neighbor.datapoint.CopyFrom(point.message)
                else:
                    neighbor.datapoint.datapoint_id = point.message.datapoint_id
                    if point.message.HasField("crowding_tag"):
                        neighbor.datapoint.crowding_tag.CopyFrom(point.message.crowding_tag)
                if dense is not None:
                    neighbor.distance = dense
                if sparse is not None:
                    neighbor.sparse_distance = sparse
        return _to_json(response)


# Parsing ------------------------------------------------------------------------


def _check_name(name: str, collection: str) -> None:
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "projects"
        or parts[2] != "locations"
        or parts[4] != collection
    ):
        raise ValueError(f"{name!r} is not projects/{{p}}/locations/{{l}}/{collection}/{{id}}")


def _parse(body: dict[str, Any], message_type: Any) -> Any:
    """`body` as the raw protobuf of the proto-plus `message_type`, parsed like
    Google's front end does (camelCase or snake_case, unknown fields rejected)."""
    message = message_type.pb()()
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as error:
        raise ApiError(400, f"Invalid JSON payload received. {error}") from error
    return message


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def _point(message: Any, dimensions: int) -> _Point:
    """A datapoint checked and prepared for search (400 if the index refuses it)."""
    key = message.datapoint_id
    dense = list(message.feature_vector)
    sparse_message = message.sparse_embedding
    if len(sparse_message.values) != len(sparse_message.dimensions):
        raise ApiError(
            400,
            f"The number of sparse embedding values ({len(sparse_message.values)}) and "
            f"dimensions ({len(sparse_message.dimensions)}) differ. Datapoint ID: {key}.",
        )
    sparse = dict(zip(sparse_message.dimensions, sparse_message.values, strict=True))
    if dense and len(dense) != dimensions:
        raise ApiError(
            400,
            f"Incorrect dimensionality. Expected {dimensions}, got {len(dense)}. "
            f"Datapoint ID: {key}.",
        )
    if not dense and not sparse:
        raise ApiError(400, f"Datapoint ID: {key} has neither a dense nor a sparse embedding.")
    numbers: dict[str, tuple[str, float]] = {}
    for restrict in message.numeric_restricts:
        if restrict.op:
            raise ApiError(
                400, f"Numeric restrict op must not be set for a datapoint. Datapoint ID: {key}."
            )
        numbers[restrict.namespace] = _number(restrict)
    return _Point(
        message=message,
        dense=dense,
        sparse=sparse,
        tokens=_tokens(message.restricts),
        numbers=numbers,
        crowding=message.crowding_tag.crowding_attribute,
    )


def _tokens(restricts: Iterable[Any]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Allow and deny tokens by namespace (repeated namespaces merged)."""
    allow: dict[str, set[str]] = {}
    deny: dict[str, set[str]] = {}
    for restrict in restricts:
        allow.setdefault(restrict.namespace, set()).update(restrict.allow_list)
        deny.setdefault(restrict.namespace, set()).update(restrict.deny_list)
    return {ns: (frozenset(allow[ns]), frozenset(deny[ns])) for ns in allow}


def _number(restrict: Any) -> tuple[str, float]:
    kind = restrict.WhichOneof("Value") or "value_int"
    return kind, float(getattr(restrict, kind))


# Search -------------------------------------------------------------------------


def _allowed(point: _Point, query: Any) -> bool:
    """Whether `point` passes the token and numeric restricts of the query datapoint."""
    _none: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    for namespace, (allow, deny) in _tokens(query.restricts).items():
        has, denies = point.tokens.get(namespace, _none)
        if deny & has or allow & denies:
            return False
        if allow and not allow & has:
            return False
    for restrict in query.numeric_restricts:
        if not restrict.op:
            raise ApiError(
                400, f"Numeric restrict op is required in a query: {restrict.namespace}."
            )
        value = point.numbers.get(restrict.namespace)
        kind, wanted = _number(restrict)
        if value is None or value[0] != kind or not _COMPARE[restrict.op](value[1], wanted):
            return False
    return True


def _dense_distance(distance: Distance, a: list[float], b: list[float]) -> float:
    if distance == "SQUARED_L2_DISTANCE":
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    if distance == "COSINE_DISTANCE":
        norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        return dot / norms if norms else 0.0
    return dot


def _search(index: _Index, query: Any) -> list[tuple[_Point, float | None, float | None]]:
    """The neighbours of one query, closest first, with their dense and sparse distances."""
    datapoint = query.datapoint
    vector = list(datapoint.feature_vector)
    sparse_query = dict(
        zip(datapoint.sparse_embedding.dimensions, datapoint.sparse_embedding.values, strict=True)
    )
    if vector and len(vector) != index.dimensions:
        raise ApiError(
            400,
            f"Query dimensionality {len(vector)} does not match the index's {index.dimensions}.",
        )
    if not vector and not sparse_query:
        raise ApiError(400, "A query needs a feature_vector or a sparse_embedding.")
    candidates = sorted(
        (p for p in index.points.values() if _allowed(p, datapoint)),
        key=lambda p: p.message.datapoint_id,
    )
    dense: dict[str, float] = {}
    if vector:
        for point in candidates:
            if point.dense:
                dense[point.message.datapoint_id] = _dense_distance(
                    index.distance, vector, point.dense
                )
    sparse: dict[str, float] = {}
    if sparse_query:
        for point in candidates:
            shared = sparse_query.keys() & point.sparse.keys()
            if shared:
                sparse[point.message.datapoint_id] = sum(
                    sparse_query[d] * point.sparse[d] for d in shared
                )
    closer = -1.0 if index.distance == "SQUARED_L2_DISTANCE" else 1.0
    dense_order = sorted(dense, key=lambda k: (-closer * dense[k], k))
    sparse_order = sorted(sparse, key=lambda k: (-sparse[k], k))
    if vector and sparse_query:
        alpha = _alpha(query)
        fused: dict[str, float] = {}
        for rank, key in enumerate(dense_order, start=1):
            fused[key] = fused.get(key, 0.0) + alpha / (RRF_K + rank)
        for rank, key in enumerate(sparse_order, start=1):
            fused[key] = fused.get(key, 0.0) + (1.0 - alpha) / (RRF_K + rank)
        order = sorted((k for k in fused if fused[k] > 0), key=lambda k: (-fused[k], k))
    else:
        order = dense_order if vector else sparse_order
    limit = query.neighbor_count or index.default_neighbor_count
    per_crowd = query.per_crowding_attribute_neighbor_count
    crowds: dict[str, int] = {}
    found: list[tuple[_Point, float | None, float | None]] = []
    for key in order:
        if len(found) >= limit:
            break
        point = index.points[key]
        if per_crowd and point.crowding:
            if crowds.get(point.crowding, 0) >= per_crowd:
                continue
            crowds[point.crowding] = crowds.get(point.crowding, 0) + 1
        found.append((point, dense.get(key), sparse.get(key)))
    return found


def _alpha(query: Any) -> float:
    """The dense weight of a hybrid query."""
    return float(query.rrf.alpha) if query.HasField("rrf") else DEFAULT_ALPHA
