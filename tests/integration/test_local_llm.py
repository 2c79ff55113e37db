"""The platform with a real model as its simple tier: the local LLM (llama.cpp's
server and Qwen2.5-Coder 0.5B, services/llm) started by the supervisor next to the
services, reached by the generation service's vllm backend.

What a hand-written fake cannot show: the grounded prompt, streaming, token
usage and the grounding check on a real model's output, and a real server
killed while it writes. Answers are deterministic at temperature 0, but the
assertions are on structure (citations that exist, declines flagged, usage,
the grounding verdict, the route), not on wording. Slow (about 2 minutes on 2
cores: the model reads each prompt at 50-130 tokens/s): `make test-all` runs it
after `make setup-llm`. Ports 5260x, gateway 52680: those of
scripts/llm_grounding.py, so run one at a time.
"""

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from services.cli.supervisor import ALL, LLM, SERVING, Platform, gateway_url
from services.common.citations import cited_numbers
from services.common.tenancy import DEFAULT_TENANT

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52601",
    "RAG_INGESTION_ADDR": "127.0.0.1:52602",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52603",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52604",
    "RAG_GENERATION_ADDR": "127.0.0.1:52605",
    "RAG_LLM_PORT": "52606",
    "RAG_GATEWAY_PORT": "52680",
    "RAG_LLM_MODEL": "qwen2.5-coder-0.5b-instruct",
    "RAG_LLM_THREADS": "1",  # a shared 2-core machine stays usable
    "RAG_QUERY_CACHE_ENABLED": "false",
    "RAG_DRAIN_SECONDS": "2",
}
THRESHOLD = 0.8
"""RAG_GENERATION_GROUNDING_THRESHOLD's default."""
ANSWERABLE = "How often must the status page be updated during a SEV1 incident?"
UNANSWERABLE = ("Where is the production database hosted?", "Who is the CEO of Acme Cloud?")
"""About the corpus's subjects, answered nowhere in it (docs/quality.md)."""
TIMEOUT = 180.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with Platform(tmp_path_factory.mktemp("llm"), env=ENV, services=(*ALL, LLM)) as running:
        with grpc.insecure_channel(running.settings.ingestion_addr) as channel:
            uris = [p.as_uri() for p in sorted((REPO / "samples" / "corpus").iterdir())]
            events = list(
                ingestion_pb2_grpc.IngestionServiceStub(channel).IngestUris(
                    ingestion_pb2.IngestUrisRequest(uris=uris, tenant=DEFAULT_TENANT),
                    timeout=300,
                )
            )
        assert all(e.result.status != ingestion_pb2.IngestResult.STATUS_FAILED for e in events)
        yield running


@pytest.fixture(scope="module")
def query(platform: Platform) -> Iterator[query_pb2_grpc.QueryServiceStub]:
    with grpc.insecure_channel(platform.settings.query_addr) as channel:
        yield query_pb2_grpc.QueryServiceStub(channel)


def request(question: str, tier: int = common_pb2.TIER_UNSPECIFIED) -> dict[str, object]:
    return {
        "question": question,
        "tier": tier,
        "caller": common_pb2.Caller(tenant=DEFAULT_TENANT),
        "bypass_cache": True,
    }


def assert_citations_exist(reply: query_pb2.AskResponse) -> None:
    """Every [n] of the answer is one of its citations, each a retrieved chunk."""
    numbers = {c.number for c in reply.citations}
    assert set(cited_numbers(reply.answer)) <= numbers
    assert all(c.document_id and c.source_uri for c in reply.citations)


def test_the_llm_is_supervised_with_the_services(platform: Platform) -> None:
    assert platform.health()[LLM] == SERVING
    models = httpx.get(f"{platform.address(LLM)}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == [ENV["RAG_LLM_MODEL"]]
    assert platform.env["RAG_GENERATION_SIMPLE_CHAIN"] == "vllm,extractive"


def test_a_model_answer_carries_usage_route_and_grounding(
    query: query_pb2_grpc.QueryServiceStub,
) -> None:
    reply = query.Ask(
        query_pb2.AskRequest(**request(ANSWERABLE, common_pb2.TIER_SIMPLE)), timeout=TIMEOUT
    )
    assert (reply.backend, reply.model) == ("vllm", ENV["RAG_LLM_MODEL"])
    assert reply.route.tier == common_pb2.TIER_SIMPLE and reply.route.overridden
    assert reply.route.reason.startswith("simple: requested")
    # the server's usage fields: the grounded prompt alone is a few hundred tokens
    assert reply.usage.input_tokens > 300 and reply.usage.output_tokens > 0
    assert reply.cost_usd == 0.0, "a local model has no list price"
    assert reply.grounding.checker == "lexical-v1"
    if reply.declined:
        assert not reply.citations
    else:
        assert reply.grounding.checked > 0
        assert_citations_exist(reply)


@pytest.mark.parametrize("question", UNANSWERABLE)
def test_an_unsupported_answer_is_never_shown_as_grounded(
    query: query_pb2_grpc.QueryServiceStub, question: str
) -> None:
    # Forced to the simple tier, the model's answer is kept, with its verdict.
    forced = query.Ask(
        query_pb2.AskRequest(**request(question, common_pb2.TIER_SIMPLE)), timeout=TIMEOUT
    )
    assert forced.backend == "vllm"
    assert forced.declined or (
        forced.grounding.score < THRESHOLD and forced.grounding.unsupported_sentences
    ), "an answer the sources do not hold is flagged"
    # Routed, it is escalated (or never asked): the user sees a decline.
    routed = query.Ask(query_pb2.AskRequest(**request(question)), timeout=TIMEOUT)
    assert routed.declined and not routed.citations
    assert routed.route.reason
    if routed.route.escalation:
        assert routed.route.escalation.startswith("grounding ")
        assert routed.backend == "extractive" and routed.route.tier == common_pb2.TIER_COMPLEX


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, object]]]:
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_the_gateway_streams_the_models_tokens(platform: Platform) -> None:
    body = {"question": ANSWERABLE, "tier": "TIER_SIMPLE", "bypass_cache": True}
    with httpx.stream(
        "POST", f"{gateway_url(platform.settings)}/v1/ask/stream", json=body, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names.count("delta") > 3, "the model's tokens, as it writes them"
    assert names[-1] == "answer" and "error" not in names and "restart" not in names
    answer = events[-1][1]
    assert answer["backend"] == "vllm"
    deltas = "".join(str(data["text"]) for name, data in events if name == "delta")
    assert (
        re.sub(r"\s*\[\d+\]", "", deltas).strip()
        == re.sub(r"\s*\[\d+\]", "", str(answer["answer"])).strip()
    ), "the final text is the streamed one, less citations of sources not given"
    usage = answer["usage"]
    assert isinstance(usage, dict) and usage["input_tokens"] > 300 and usage["output_tokens"] > 0
    route = answer["route"]
    assert isinstance(route, dict) and route["reason"] and route["backend"] == "vllm"


def test_a_model_killed_mid_answer_falls_back_with_a_restart(
    platform: Platform, query: query_pb2_grpc.QueryServiceStub
) -> None:
    stream = query.AskStream(
        query_pb2.AskStreamRequest(**request(ANSWERABLE, common_pb2.TIER_SIMPLE)), timeout=TIMEOUT
    )
    events: list[query_pb2.AskStreamResponse] = []
    try:
        for event in stream:
            events.append(event)
            if len(events) == 1:
                assert event.WhichOneof("event") == "delta"
                os.kill(platform.pids()[LLM], signal.SIGKILL)
        kinds = [e.WhichOneof("event") for e in events]
        assert "restart" in kinds and kinds[-1] == "final"
        restart = events[kinds.index("restart")].restart.reason
        assert restart.startswith("vllm failed mid-answer: UNAVAILABLE: vllm (")
        assert "connection lost after" in restart, "not taken for a server never reached"
        final = events[-1].final
        assert final.backend == "extractive" and final.route.tier == common_pb2.TIER_SIMPLE
        assert [(a.backend, a.error_code) for a in final.route.fallbacks] == [
            ("vllm", "UNAVAILABLE")
        ]
    finally:
        platform.restart(LLM)
