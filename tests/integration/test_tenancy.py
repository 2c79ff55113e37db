"""Tenant isolation, access labels and metadata filters through every API, end to end.

Every service is a real process (the session's platform); the REST checks use a
second gateway process with API keys in front of the same services. Each test
works in tenants of its own, so their documents never meet the other tests'.
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from ragplatform.v1 import (
    common_pb2,
    debug_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    ingestion_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.cli.supervisor import Platform, StartupError, gateway_url
from tests.integration.conftest import TEST_ENV, Stubs, ask, ragctl, upload

pytestmark = pytest.mark.integration

Status = ingestion_pb2.IngestResult.Status
CREATED_OR_UNCHANGED = {Status.STATUS_CREATED, Status.STATUS_UNCHANGED}

A, B = "iso-a", "iso-b"
OBSERVATORY = (
    b"# Observatory\n\nThe Kestrel Ridge observatory dome opens at 21:40 on clear nights.\n"
)
OBSERVATORY_Q = "When does the Kestrel Ridge observatory dome open?"


def caller(tenant: str, *labels: str) -> common_pb2.Caller:
    return common_pb2.Caller(tenant=tenant, access_labels=labels)


def unix(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())


def cited(answer: query_pb2.AskResponse) -> set[str]:
    return {c.document_id for c in answer.citations}


def retrieved(answer: query_pb2.AskResponse) -> set[str]:
    return {hit.chunk.document_id for hit in answer.debug.retrieved}


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The error `call` fails with (consuming a stream)."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return caught.value


@pytest.fixture(scope="module")
def observatory(stubs: Stubs) -> ingestion_pb2.IngestResult:
    """Tenant A's document (tenant B has none)."""
    result = upload(stubs, "observatory.md", OBSERVATORY, document_id="observatory", tenant=A)
    assert result.status in CREATED_OR_UNCHANGED, result
    assert result.document.tenant == A
    return result


@pytest.fixture(scope="module")
def vector(platform: Platform) -> embedding_pb2.Vector:
    with grpc.insecure_channel(platform.settings.embedding_addr) as channel:
        reply = embedding_pb2_grpc.EmbeddingServiceStub(channel).EmbedQueries(
            embedding_pb2.EmbedQueriesRequest(texts=[OBSERVATORY_Q]), timeout=30
        )
    found: embedding_pb2.Vector = reply.vectors[0]
    return found


# --------------------------------------------------------------------------- isolation


def test_another_tenant_never_gets_the_answer(
    stubs: Stubs, observatory: ingestion_pb2.IngestResult
) -> None:
    own = ask(stubs, OBSERVATORY_Q, tenant=A)
    assert "21:40" in own.answer and cited(own) == {"observatory"}
    # The same question right after, by another tenant: an answer cache must not leak.
    other = ask(stubs, OBSERVATORY_Q, tenant=B)
    assert "21:40" not in other.answer and not cited(other)
    assert other.declined
    seen = ask(stubs, OBSERVATORY_Q, tenant=A, debug=True, bypass_cache=True)
    assert {hit.chunk.tenant for hit in seen.debug.retrieved} == {A}
    unseen = ask(stubs, OBSERVATORY_Q, tenant=B, debug=True, bypass_cache=True)
    assert not retrieved(unseen)
    streamed = list(
        stubs.query.AskStream(
            query_pb2.AskStreamRequest(question=OBSERVATORY_Q, caller=caller(B)), timeout=60
        )
    )
    final = streamed[-1].final
    assert "21:40" not in final.answer and not final.citations


def test_another_tenant_cannot_get_list_search_or_delete(
    stubs: Stubs, observatory: ingestion_pb2.IngestResult, vector: embedding_pb2.Vector
) -> None:
    get_b = retrieval_pb2.GetDocumentRequest(document_id="observatory", tenant=B)
    assert rpc_error(lambda: stubs.retrieval.GetDocument(get_b, timeout=10)).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    listed = stubs.retrieval.ListDocuments(
        retrieval_pb2.ListDocumentsRequest(tenant=B, page_size=1000), timeout=10
    )
    assert "observatory" not in {d.document_id for d in listed.documents}
    only_it = common_pb2.MetadataFilter(document_ids=["observatory"])
    found = stubs.retrieval.Search(
        retrieval_pb2.SearchRequest(
            vector=vector, top_k=10, query_text=OBSERVATORY_Q, filter=only_it, caller=caller(B)
        ),
        timeout=10,
    )
    assert not found.results, "naming another tenant's document id finds nothing"

    delete_b = ingestion_pb2.DeleteDocumentRequest(document_id="observatory", tenant=B)
    remove_b = retrieval_pb2.RemoveDocumentRequest(document_id="observatory", tenant=B)
    for call in (
        lambda: stubs.ingestion.DeleteDocument(delete_b, timeout=10),
        lambda: stubs.retrieval.RemoveDocument(remove_b, timeout=10),
    ):
        assert rpc_error(call).code() == grpc.StatusCode.NOT_FOUND
    still = stubs.retrieval.GetDocument(
        retrieval_pb2.GetDocumentRequest(document_id="observatory", tenant=A), timeout=10
    )
    assert still.document.chunk_count == observatory.document.chunk_count
    assert still.document.tenant == A


def test_request_debugging_is_confined_to_the_caller(
    stubs: Stubs, observatory: ingestion_pb2.IngestResult
) -> None:
    answer = ask(stubs, OBSERVATORY_Q, tenant=A)

    def record_for(who: common_pb2.Caller) -> debug_pb2.RequestRecord:
        reply = stubs.request_debug.GetRequestRecord(
            debug_pb2.GetRequestRecordRequest(request_id=answer.request_id, caller=who),
            timeout=10,
        )
        return reply.record  # type: ignore[no-any-return]

    record = record_for(caller(A))
    assert record.request.caller.tenant == A, "the record keeps whom the request acted for"
    for outsider in (caller(B), common_pb2.Caller(tenant=B, access_labels=["hr"])):
        with pytest.raises(grpc.RpcError) as hidden:
            record_for(outsider)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND  # as for an unknown id
        assert "no record of request_id" in str(hidden.value.details())
    with pytest.raises(grpc.RpcError) as anonymous:
        record_for(common_pb2.Caller())
    assert anonymous.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    labelled = ask(stubs, OBSERVATORY_Q, caller=common_pb2.Caller(tenant=A, access_labels=["hr"]))
    with pytest.raises(grpc.RpcError) as fewer_labels:  # it showed what "hr" may see
        stubs.request_debug.GetRequestRecord(
            debug_pb2.GetRequestRecordRequest(request_id=labelled.request_id, caller=caller(A)),
            timeout=10,
        )
    assert fewer_labels.value.code() == grpc.StatusCode.NOT_FOUND

    def check(who: common_pb2.Caller) -> debug_pb2.CheckDocumentResponse:
        request = debug_pb2.CheckDocumentRequest(
            question=OBSERVATORY_Q, document_id="observatory", caller=who
        )
        reply: debug_pb2.CheckDocumentResponse = stubs.request_debug.CheckDocument(
            request, timeout=30
        )
        return reply

    own = check(caller(A))
    assert own.indexed and own.rank == 1 and own.document.tenant == A
    other = check(caller(B))
    assert not other.indexed and not other.document.document_id


def test_two_tenants_may_use_the_same_document_id(stubs: Stubs) -> None:
    question = "When does the Lisbon office close on Fridays?"
    for tenant, hour in (("twin-a", b"16:00"), ("twin-b", b"18:30")):
        body = b"# Office hours\n\nThe Lisbon office closes at " + hour + b" on Fridays.\n"
        result = upload(stubs, "hours.md", body, document_id="handbook", tenant=tenant)
        assert result.status in CREATED_OR_UNCHANGED, "each tenant has its own 'handbook'"
    assert "16:00" in ask(stubs, question, tenant="twin-a").answer
    assert "18:30" in ask(stubs, question, tenant="twin-b").answer
    stubs.ingestion.DeleteDocument(
        ingestion_pb2.DeleteDocumentRequest(document_id="handbook", tenant="twin-a"), timeout=10
    )
    assert "18:30" in ask(stubs, question, tenant="twin-b").answer
    assert ask(stubs, question, tenant="twin-a").declined


# --------------------------------------------------------------------------- the tenant is required


def _no_tenant_calls(
    stubs: Stubs, vector: embedding_pb2.Vector, tenant: str
) -> dict[str, Callable[[], Any]]:
    """One call of every RPC that acts for a tenant, with `tenant` (empty or malformed)."""
    who = common_pb2.Caller(tenant=tenant)

    def upload_one() -> Any:
        return upload(stubs, "x.md", b"# X\n\nText.\n", document_id="x", tenant=tenant)

    return {
        "Ask": lambda: stubs.query.Ask(query_pb2.AskRequest(question="q", caller=who), timeout=10),
        "AskStream": lambda: stubs.query.AskStream(
            query_pb2.AskStreamRequest(question="q", caller=who), timeout=10
        ),
        "CheckDocument": lambda: stubs.request_debug.CheckDocument(
            debug_pb2.CheckDocumentRequest(question="q", document_id="x", caller=who), timeout=10
        ),
        "Search": lambda: stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(vector=vector, top_k=3, query_text="q", caller=who),
            timeout=10,
        ),
        "GetDocument": lambda: stubs.retrieval.GetDocument(
            retrieval_pb2.GetDocumentRequest(document_id="x", tenant=tenant), timeout=10
        ),
        "ListDocuments": lambda: stubs.retrieval.ListDocuments(
            retrieval_pb2.ListDocumentsRequest(tenant=tenant), timeout=10
        ),
        "RemoveDocument": lambda: stubs.retrieval.RemoveDocument(
            retrieval_pb2.RemoveDocumentRequest(document_id="x", tenant=tenant), timeout=10
        ),
        "DeleteDocument": lambda: stubs.ingestion.DeleteDocument(
            ingestion_pb2.DeleteDocumentRequest(document_id="x", tenant=tenant), timeout=10
        ),
        "UploadDocument": upload_one,
        "IngestUris": lambda: stubs.ingestion.IngestUris(
            ingestion_pb2.IngestUrisRequest(uris=["/nonexistent"], tenant=tenant), timeout=10
        ),
    }


RPCS = [
    "Ask",
    "AskStream",
    "CheckDocument",
    "Search",
    "GetDocument",
    "ListDocuments",
    "RemoveDocument",
    "DeleteDocument",
    "UploadDocument",
    "IngestUris",
]


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("tenant", "fragment"), [("", "tenant is missing"), ("two words", "tenant 'two words'")]
)
def test_a_request_without_a_valid_tenant_is_invalid_argument(
    stubs: Stubs, vector: embedding_pb2.Vector, rpc: str, tenant: str, fragment: str
) -> None:
    before = stubs.retrieval.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
    error = rpc_error(_no_tenant_calls(stubs, vector, tenant)[rpc])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert fragment in (error.details() or "")
    after = stubs.retrieval.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
    assert after.document_count == before.document_count, "nothing was written"


# --------------------------------------------------------------------------- access labels


@pytest.fixture(scope="module")
def labelled(stubs: Stubs) -> str:
    """Tenant `labels`: a salary table for `hr` only, and a public canteen notice."""
    tenant = "labels"
    salaries = b"# Salaries\n\nThe 2024 salary band for senior engineers is 91,000 euros.\n"
    canteen = b"# Canteen\n\nThe canteen serves vegetarian lasagne every Wednesday.\n"
    hidden = upload(
        stubs, "salaries.md", salaries, document_id="salaries", tenant=tenant, access_labels=["hr"]
    )
    public = upload(stubs, "canteen.md", canteen, document_id="canteen", tenant=tenant)
    assert {hidden.status, public.status} <= CREATED_OR_UNCHANGED
    assert list(hidden.document.access_labels) == ["hr"]
    return tenant


SALARY_Q = "What is the 2024 salary band for senior engineers?"


# `hr` asks first, so that an answer cache leaking across labels would show.
@pytest.mark.parametrize(
    ("labels", "sees"),
    [(("hr",), True), ((), False), (("finance",), False), (("finance", "hr"), True)],
)
def test_access_labels_decide_who_sees_a_document(
    stubs: Stubs, labelled: str, labels: tuple[str, ...], sees: bool
) -> None:
    who = caller(labelled, *labels)
    assert ("91,000" in ask(stubs, SALARY_Q, caller=who, top_k=5).answer) is sees
    answer = ask(stubs, SALARY_Q, caller=who, debug=True, top_k=5, bypass_cache=True)
    assert ("salaries" in retrieved(answer)) is sees
    assert "canteen" in retrieved(answer), "unlabelled documents are every caller's"
    for hit in answer.debug.retrieved:
        assert not hit.chunk.access_labels or set(hit.chunk.access_labels) & set(labels)


# --------------------------------------------------------------------------- tags and dates


@pytest.fixture(scope="module")
def dated(stubs: Stubs) -> str:
    """Tenant `dated`: two notices on one topic, differently tagged and dated."""
    tenant = "dated"
    old = b"# Parking 2020\n\nThe visitor car park by the north gate charges 2 euros per hour.\n"
    new = b"# Parking 2024\n\nThe visitor car park by the north gate charges 4 euros per hour.\n"
    for document_id, body, tag, day in (
        ("parking-2020", old, "archive", "2020-03-01"),
        ("parking-2024", new, "current", "2024-03-01"),
    ):
        result = upload(
            stubs,
            f"{document_id}.md",
            body,
            document_id=document_id,
            tenant=tenant,
            tags=[tag],
            document_date_unix=unix(day),
        )
        assert result.status in CREATED_OR_UNCHANGED
        assert result.document.document_date_unix == unix(day)
    return tenant


PARKING_Q = "How much does the visitor car park by the north gate charge per hour?"


@pytest.mark.parametrize(
    ("restriction", "expected"),
    [
        ({}, {"parking-2020", "parking-2024"}),
        ({"tags": ["current"]}, {"parking-2024"}),
        ({"tags": ["archive", "current"]}, {"parking-2020", "parking-2024"}),
        ({"tags": ["none-such"]}, set()),
        ({"date_from_unix": unix("2023-01-01")}, {"parking-2024"}),
        ({"date_to_unix": unix("2020-03-01")}, {"parking-2020"}),  # inclusive bound
        ({"date_from_unix": unix("2020-03-02"), "date_to_unix": unix("2024-02-29")}, set()),
        ({"tags": ["archive"], "date_from_unix": unix("2023-01-01")}, set()),
    ],
)
def test_tags_and_date_ranges_filter_retrieval(
    stubs: Stubs, dated: str, restriction: dict[str, Any], expected: set[str]
) -> None:
    answer = ask(
        stubs,
        PARKING_Q,
        tenant=dated,
        top_k=5,
        debug=True,
        bypass_cache=True,  # the filter is under test here, not the cache
        filter=common_pb2.MetadataFilter(**restriction),
    )
    assert retrieved(answer) == expected
    assert cited(answer) <= expected
    if not expected:
        assert answer.declined


def test_a_date_range_ending_before_it_starts_is_invalid_argument(
    stubs: Stubs, dated: str, vector: embedding_pb2.Vector
) -> None:
    backwards = common_pb2.MetadataFilter(date_from_unix=unix("2024-01-01"), date_to_unix=0)
    for call in (
        lambda: ask(stubs, PARKING_Q, tenant=dated, filter=backwards),
        lambda: stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(
                vector=vector, top_k=3, query_text="q", filter=backwards, caller=caller(dated)
            ),
            timeout=10,
        ),
    ):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "date_to_unix" in (error.details() or "")


# --------------------------------------------------------------------------- REST gateway

GATEWAY_KEYS = {
    "rest-key-a": {"tenant": "rest-a"},
    "rest-key-a-hr": {"tenant": "rest-a", "access_labels": ["hr"]},
    "rest-key-b": {"tenant": "rest-b"},
}


@pytest.fixture(scope="module")
def keyed(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A second gateway process, with API keys, in front of the session's services."""
    env = {
        **TEST_ENV,
        "RAG_GATEWAY_PORT": "52181",
        "RAG_GATEWAY_API_KEYS": json.dumps(GATEWAY_KEYS),
    }
    data_dir = tmp_path_factory.mktemp("keyed-gateway")
    with (
        Platform(data_dir, env=env, services=["gateway"]) as gateway,
        httpx.Client(base_url=gateway_url(gateway.settings), timeout=60) as http,
    ):
        yield http


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ROTA = b"# Rota\n\nThe night shift at the Ostend depot starts at 22:15.\n"
ROTA_Q = "When does the night shift at the Ostend depot start?"
PAYROLL = b"# Payroll\n\nPayroll for the Ostend depot is sent on the 27th of each month.\n"
PAYROLL_Q = "On which day is payroll for the Ostend depot sent?"


def _upload(http: httpx.Client, key: str, name: str, body: bytes, **form: Any) -> dict[str, Any]:
    response = http.post(
        "/v1/documents",
        files={"file": (f"{name}.md", body)},
        data={"document_id": name, **form},
        headers=as_key(key),
    )
    assert response.status_code in (200, 201), response.text
    document: dict[str, Any] = response.json()["document"]
    return document


def test_two_api_keys_are_two_isolated_tenants(keyed: httpx.Client) -> None:
    rota = _upload(keyed, "rest-key-a", "rota", ROTA)
    assert rota["tenant"] == "rest-a"
    key_a, key_b = as_key("rest-key-a"), as_key("rest-key-b")

    own = keyed.post("/v1/ask", json={"question": ROTA_Q}, headers=key_a).json()
    assert "22:15" in own["answer"] and own["citations"][0]["document_id"] == "rota"
    other = keyed.post("/v1/ask", json={"question": ROTA_Q}, headers=key_b)
    assert other.status_code == 200
    assert "22:15" not in other.json()["answer"] and not other.json()["citations"]
    streamed = keyed.post("/v1/ask/stream", json={"question": ROTA_Q}, headers=key_b)
    assert streamed.status_code == 200 and "22:15" not in streamed.text

    assert keyed.get("/v1/documents/rota", headers=key_a).json()["tenant"] == "rest-a"
    assert keyed.get("/v1/documents/rota", headers=key_b).status_code == 404
    listed = keyed.get("/v1/documents", params={"page_size": 1000}, headers=key_b).json()
    assert "rota" not in {d["document_id"] for d in listed["documents"]}
    assert keyed.delete("/v1/documents/rota", headers=key_b).status_code == 404
    assert keyed.get("/v1/documents/rota", headers=key_a).status_code == 200, "still there"

    refused = keyed.get("/v1/documents")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHENTICATED"
    spoofed = keyed.post(
        "/v1/ask", json={"question": ROTA_Q, "caller": {"tenant": "rest-a"}}, headers=key_b
    )
    assert spoofed.status_code == 422 and "body.caller" in spoofed.json()["error"]["message"]


def test_a_key_without_the_label_never_sees_labelled_documents(keyed: httpx.Client) -> None:
    payroll = _upload(keyed, "rest-key-a-hr", "payroll", PAYROLL, access_labels=["hr"])
    assert payroll["access_labels"] == ["hr"]
    plain, hr = as_key("rest-key-a"), as_key("rest-key-a-hr")
    body = {"question": PAYROLL_Q, "debug": True, "top_k": 5}
    seen = keyed.post("/v1/ask", json=body, headers=hr).json()
    assert "27th" in seen["answer"]
    unseen = keyed.post("/v1/ask", json=body, headers=plain).json()
    assert "27th" not in unseen["answer"]
    assert "payroll" not in {h["chunk"]["document_id"] for h in unseen["debug"]["retrieved"]}
    assert keyed.get("/v1/documents/payroll", headers=plain).status_code == 404
    listed = keyed.get("/v1/documents", params={"page_size": 1000}, headers=plain).json()
    assert "payroll" not in {d["document_id"] for d in listed["documents"]}
    assert keyed.get("/v1/documents/payroll", headers=hr).status_code == 200


def test_a_key_cannot_overwrite_or_delete_what_it_cannot_read(keyed: httpx.Client) -> None:
    """The finding: a key without a document's labels overwrote it, and learned
    that it existed from UPDATED vs CREATED."""
    secret = b"# Bonus\n\nThe Ostend depot bonus pool is 40,000 euros this year.\n"
    _upload(keyed, "rest-key-a-hr", "bonus", secret, access_labels=["hr"])
    plain, hr = as_key("rest-key-a"), as_key("rest-key-a-hr")
    forged = keyed.post(
        "/v1/documents",
        files={"file": ("bonus.md", b"# Bonus\n\nThere is no bonus.\n")},
        data={"document_id": "bonus"},
        headers=plain,
    )
    assert forged.status_code == 403, forged.text
    assert (
        forged.json()["error"]["message"] == "bonus.md: the caller may not write document 'bonus'"
    )
    labelled = keyed.post(
        "/v1/documents",
        files={"file": ("memo.md", b"# Memo\n\nAn hr memo from a key without hr.\n")},
        data={"document_id": "memo", "access_labels": ["hr"]},
        headers=plain,
    )
    assert labelled.status_code == 403, labelled.text
    for document_id in ("bonus", "no-such-document"):  # hidden and missing: the same answer
        deleted = keyed.delete(f"/v1/documents/{document_id}", headers=plain)
        assert deleted.status_code == 404
        expected = f"document {document_id!r} not found in tenant 'rest-a'"
        assert deleted.json()["error"]["message"] == expected
    kept = keyed.get("/v1/documents/bonus", headers=hr).json()
    assert kept["content_sha256"] == hashlib.sha256(secret).hexdigest(), "never overwritten"
    assert keyed.delete("/v1/documents/bonus", headers=hr).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"question": "q", "filter": {"tenant": "rest-b"}}, 422, "body.filter.tenant"),
        ({"question": "q", "filter": {"tags": ["a"], "colour": "red"}}, 422, "body.filter.colour"),
        (
            {"question": "q", "filter": {"date_from_unix": 10, "date_to_unix": 5}},
            400,
            "date_to_unix",
        ),
        ({"question": "q", "filter": {"tags": [" padded"]}}, 400, "filter.tags"),
    ],
)
def test_gateway_filter_errors_name_the_field(
    keyed: httpx.Client, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = keyed.post("/v1/ask", json=body, headers=as_key("rest-key-a"))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert fragment in response.json()["error"]["message"]


def test_malformed_api_keys_stop_the_gateway_naming_the_problem(tmp_path: Path) -> None:
    env = {
        **TEST_ENV,
        "RAG_GATEWAY_PORT": "52183",
        "RAG_GATEWAY_API_KEYS": "hunter2-secret,other-secret",
    }
    with pytest.raises(StartupError) as caught:
        Platform(tmp_path, env=env, services=["gateway"]).start(timeout=60)
    assert "RAG_GATEWAY_API_KEYS is not JSON" in caught.value.log_tail
    assert "hunter2" not in caught.value.log_tail, "keys never reach the logs"


# --------------------------------------------------------------------------- ragctl


def test_ragctl_acts_for_its_tenant(tmp_path: Path) -> None:
    doc = tmp_path / "ferry.txt"
    doc.write_text("Ferry notes\n\nThe Harwich ferry carries 412 cars per crossing.\n")
    question = "How many cars does the Harwich ferry carry per crossing?"
    ingested = ragctl("--tenant", "cli-a", "ingest", str(doc), "--tag", "ferries", "--json")
    assert ingested.returncode == 0, ingested.stderr
    result = json.loads(ingested.stdout.splitlines()[-1])
    assert (result["document"]["tenant"], result["document"]["tags"]) == ("cli-a", ["ferries"])
    document_id = result["document"]["document_id"]

    own = json.loads(ragctl("ask", question, "--json", env={"RAG_TENANT": "cli-a"}).stdout)
    assert "412" in own["answer"]
    other = json.loads(ragctl("ask", question, "--json", "--tenant", "cli-b").stdout)
    assert "412" not in other["answer"] and not other["citations"]
    untagged = ragctl("--tenant", "cli-a", "ask", question, "--json", "--tag", "trains")
    assert "412" not in json.loads(untagged.stdout)["answer"]

    listed = ragctl("docs", "list", "--json", "--tenant", "cli-b")
    assert document_id not in {d["document_id"] for d in json.loads(listed.stdout)}
    gone = ragctl("docs", "delete", document_id, "--tenant", "cli-b")
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    assert ragctl("docs", "delete", document_id, "--tenant", "cli-a").returncode == 0
