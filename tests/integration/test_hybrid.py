"""Retrieval modes and MMR through the running platform, and `ragctl eval retrieval`."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    query_pb2,
    retrieval_pb2,
)
from services.cli.evaluate import EVAL_TENANT
from services.cli.ragctl import main
from services.cli.supervisor import Platform
from services.common.tenancy import DEFAULT_TENANT
from tests.integration.conftest import TEST_ENV, Stubs

pytestmark = pytest.mark.integration

CORPUS = [
    {
        "_id": "fuser",
        "title": "Printer faults",
        "text": "Error QX-7741 means the fuser overheated.",
    },
    {"_id": "leave", "title": "Leave policy", "text": "Staff get 25 days of paid annual leave."},
    {"_id": "bread", "title": "Bakery", "text": "The bakery bakes 340 rye loaves each morning."},
    {"_id": "light", "title": "Lighthouse", "text": "The lighthouse was automated in 1987."},
]
QUERIES = [
    {"_id": "1", "text": "What does QX-7741 mean?"},
    {"_id": "2", "text": "How many vacation days do employees get?"},
    {"_id": "3", "text": "When was the lighthouse automated?"},
]
QRELS = "query-id\tcorpus-id\tscore\n1\tfuser\t1\n2\tleave\t1\n3\tlight\t1\n"


def write_beir(directory: Path) -> Path:
    (directory / "qrels").mkdir(parents=True)
    for name, rows in (("corpus", CORPUS), ("queries", QUERIES)):
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (directory / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    (directory / "qrels" / "test.tsv").write_text(QRELS, encoding="utf-8")
    return directory


@pytest.fixture
def cache(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points ragctl at the test platform; returns the corpus cache folder."""
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAG_TENANT", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def embed(platform: Platform) -> Iterator[embedding_pb2_grpc.EmbeddingServiceStub]:
    with grpc.insecure_channel(platform.settings.embedding_addr) as channel:
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)


def test_eval_retrieval_ingests_and_reports_every_mode(
    cache: Path,
    stubs: Stubs,
    embed: embedding_pb2_grpc.EmbeddingServiceStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dataset = write_beir(tmp_path / "tiny")
    argv = ["eval", "retrieval", str(dataset), "--split", "test", "--cache-dir", str(cache)]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["queries"], report["corpus"], report["tenant"]) == (3, 4, EVAL_TENANT)
    assert report["ingested"] == {"STATUS_CREATED": 4}
    modes = report["modes"]
    assert set(modes) == {"dense", "keyword", "hybrid"}
    for figures in modes.values():
        assert set(figures) >= {"all", "tune", "held_out", "latency_p50_seconds"}
        assert figures["all"]["recall_at_100"] == 1.0
        assert 0 < figures["latency_p50_seconds"] <= figures["latency_p95_seconds"]
    assert modes["keyword"]["all"]["mrr_at_10"] >= 2 / 3  # exact terms: QX-7741, lighthouse
    assert modes["hybrid"]["all"]["mrr_at_10"] == 1.0
    assert "best_on_tune" in report["fusion_sweep"]

    # A re-run skips the unchanged documents and reports the same figures.
    assert main([*argv, "--json", "--modes", "keyword"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ingested"] == {"STATUS_UNCHANGED": 4}
    assert again["modes"]["keyword"]["all"] == modes["keyword"]["all"]

    # The modes through Search directly, as the eval tenant: a filter holds in every leg.
    eval_caller = common_pb2.Caller(tenant=EVAL_TENANT)
    question = "What does QX-7741 mean?"
    vector = embed.EmbedQueries(embedding_pb2.EmbedQueriesRequest(texts=[question]), timeout=30)
    fuser_uri = (cache.resolve() / "fuser.txt").as_uri()
    for mode in (common_pb2.RETRIEVAL_MODE_KEYWORD, common_pb2.RETRIEVAL_MODE_HYBRID):
        found = stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(
                vector=vector.vectors[0],
                top_k=2,
                query_text=question,
                mode=mode,
                caller=eval_caller,
            ),
            timeout=10,
        )
        assert found.results[0].chunk.source_uri == fuser_uri
        assert 0 < found.results[0].score <= 1  # cosine, whatever the mode
        only_other = common_pb2.MetadataFilter(source_uris=[(cache / "bread.txt").as_uri()])
        filtered = stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(
                vector=vector.vectors[0],
                top_k=3,
                query_text=question,
                mode=mode,
                filter=only_other,
                caller=eval_caller,
            ),
            timeout=10,
        )
        assert {r.chunk.source_uri for r in filtered.results} <= {only_other.source_uris[0]}
        elsewhere = stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(
                vector=vector.vectors[0],
                top_k=100,
                query_text=question,
                mode=mode,
                caller=common_pb2.Caller(tenant=DEFAULT_TENANT),
            ),
            timeout=10,
        )
        assert fuser_uri not in {r.chunk.source_uri for r in elsewhere.results}, (
            "the eval corpus stays in its tenant"
        )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": common_pb2.RETRIEVAL_MODE_KEYWORD}, "query_text is empty"),
        ({"mode": common_pb2.RETRIEVAL_MODE_HYBRID}, "query_text is empty"),
        ({"mmr_lambda": 1.5}, "mmr_lambda must be between 0 and 1"),
        ({"mode": 42, "query_text": "x"}, "mode 42 is not a known RetrievalMode"),
    ],
)
def test_bad_search_options_are_invalid_argument(
    stubs: Stubs, fields: dict[str, Any], message: str
) -> None:
    vector = embedding_pb2.Vector(values=[1.0] + [0.0] * 383)
    caller = common_pb2.Caller(tenant=DEFAULT_TENANT)
    with pytest.raises(grpc.RpcError) as caught:
        stubs.retrieval.Search(
            retrieval_pb2.SearchRequest(vector=vector, top_k=3, caller=caller, **fields),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


def test_ask_accepts_a_retrieval_mode_and_mmr(stubs: Stubs) -> None:
    caller = common_pb2.Caller(tenant=DEFAULT_TENANT)
    for mode in (common_pb2.RETRIEVAL_MODE_DENSE, common_pb2.RETRIEVAL_MODE_HYBRID):
        reply = stubs.query.Ask(
            query_pb2.AskRequest(
                question="What is the meaning of life?",
                retrieval_mode=mode,
                mmr_lambda=0.5,
                caller=caller,
            ),
            timeout=30,
        )
        assert reply.request_id
    with pytest.raises(grpc.RpcError) as caught:
        stubs.query.Ask(
            query_pb2.AskRequest(question="hello", mmr_lambda=-1.0, caller=caller), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mmr_lambda" in (caught.value.details() or "")
