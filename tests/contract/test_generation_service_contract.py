"""GenerationService as configured by settings, over gRPC, against fake vLLM and Vertex AI.

The whole generation side of the platform with only the model servers faked:
settings → backends (real SDK clients) → engine (router, chains, breakers,
grounding escalation, cost) → servicer → gRPC status codes and messages.
"""

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from prometheus_client import REGISTRY

from ragplatform.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.generation.__main__ import GenerationSettings, build_engine
from services.generation.backends import DECLINE_TEXT
from services.generation.servicer import GenerationServicer
from services.runtime.errors import ErrorMappingInterceptor
from tests.contract.conftest import Running
from tests.contract.fakes.openai_fake import OpenAIFake, Reply
from tests.contract.fakes.scripted import DEFAULT_TEXT
from tests.contract.fakes.vertex_fake import GeminiReply, VertexFake

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
LEAVE = "Full-time employees get 25 days of paid leave per year."
QUESTION = "How many days of paid leave do full-time employees get?"

FIRST_AND_NEXT = {
    common_pb2.TIER_SIMPLE: ("vllm", "gemini-flash"),
    common_pb2.TIER_COMPLEX: ("gemini-pro", "vllm"),
}
"""The first two backends of each tier's chain in settings()."""

Stub = generation_pb2_grpc.GenerationServiceStub
StubFactory = Callable[..., Any]


def settings(openai: Running[OpenAIFake], vertex: Running[VertexFake], **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "generation_simple_chain": "vllm,gemini-flash,extractive",
        "generation_complex_chain": "gemini-pro,vllm,extractive",
        "vllm_base_url": f"{openai.url}/v1",
        "vllm_model": LLAMA,
        "gemini_project": "acme-rag",
        "gemini_base_url": vertex.url,
        "gemini_access_token": "fake-token",
        "generation_prices": {
            LLAMA: {"input": 0.10, "output": 0.20},
            "gemini-2.5-pro": {"input": 1.25, "output": 10.0},
        },
    }
    return GenerationSettings(**(values | overrides))


@pytest_asyncio.fixture(loop_scope="session")
async def make_stub(
    openai: Running[OpenAIFake], vertex: Running[VertexFake]
) -> AsyncIterator[StubFactory]:
    """Factory: a GenerationService on a free port built from settings(**overrides)."""
    started: list[tuple[aio.Server, aio.Channel]] = []

    async def make(**overrides: Any) -> Stub:
        server = aio.server(interceptors=[ErrorMappingInterceptor()])
        engine = build_engine(settings(openai, vertex, **overrides))
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(engine), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return Stub(channel)

    yield make
    for server, channel in started:
        await channel.close()
        await server.stop(None)


def source(number: int, text: str, score: float = 0.7) -> generation_pb2.Source:
    chunk = common_pb2.Chunk(document_id=f"doc-{number}", title=f"Doc {number}", text=text)
    return generation_pb2.Source(number=number, chunk=chunk, score=score)


def request(tier: int = common_pb2.TIER_SIMPLE, **fields: Any) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        question=QUESTION, sources=[source(1, LEAVE)], tier=tier, **fields
    )


def stream_request(
    tier: common_pb2.Tier.ValueType = common_pb2.TIER_SIMPLE,
) -> generation_pb2.GenerateStreamRequest:
    return generation_pb2.GenerateStreamRequest(
        question=QUESTION, sources=[source(1, LEAVE)], tier=tier
    )


async def test_simple_tier_answers_with_vllm_and_prices_it(make_stub: StubFactory) -> None:
    stub = await make_stub()
    reply = await stub.Generate(request())
    assert (reply.text, reply.backend, reply.model) == (DEFAULT_TEXT, "vllm", LLAMA)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (321, 17)
    assert reply.cost_usd == pytest.approx((321 * 0.10 + 17 * 0.20) / 1e6)
    route = reply.route
    assert (route.tier, route.backend, route.overridden) == (common_pb2.TIER_SIMPLE, "vllm", True)
    assert route.reason.startswith("simple: requested")
    assert {f.name for f in route.features} >= {"words", "comparison_cue", "top_score"}
    assert (reply.grounding.score, reply.grounding.checker) == (1.0, "lexical-v1")


async def test_rate_limited_backend_falls_back_and_says_so(
    make_stub: StubFactory, openai: Running[OpenAIFake]
) -> None:
    stub = await make_stub()
    openai.fake.script(Reply(status=429))
    reply = await stub.Generate(request())
    assert (reply.backend, reply.model) == ("gemini-flash", "gemini-2.5-flash")
    (attempt,) = reply.route.fallbacks
    assert (attempt.backend, attempt.model, attempt.error_code) == (
        "vllm",
        LLAMA,
        "RESOURCE_EXHAUSTED",
    )
    assert "rate limited" in attempt.message


async def test_stuck_backend_falls_back_after_its_deadline(
    make_stub: StubFactory, openai: Running[OpenAIFake]
) -> None:
    stub = await make_stub(generation_backend_deadlines={"vllm": 0.01})
    openai.fake.script(Reply(hang=True))
    reply = await stub.Generate(request())
    assert reply.backend == "gemini-flash"
    assert reply.route.fallbacks[0].error_code == "DEADLINE_EXCEEDED"


async def test_when_every_backend_fails_the_status_names_them_all(
    make_stub: StubFactory, openai: Running[OpenAIFake], vertex: Running[VertexFake]
) -> None:
    stub = await make_stub(generation_simple_chain="gemini-flash,vllm")
    vertex.fake.script(GeminiReply(status=500))
    openai.fake.script(Reply(status=429))
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.Generate(request())
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the last one's
    details = raised.value.details() or ""
    assert "every backend of the simple chain failed" in details
    assert "gemini-flash (gemini-2.5-flash" in details and f"vllm ({LLAMA}" in details


@pytest.mark.parametrize(
    ("reply", "sent", "failure"),
    [
        (Reply(break_after_chunks=2), 2, "UNAVAILABLE: vllm"),
        (
            Reply(error_after_chunks=2),  # vLLM's error event says 400 BadRequestError
            2,
            f"UNAVAILABLE: vllm ({LLAMA} at {{url}}/v1): error inside the stream: fake 400 "
            "(BadRequestError, code 400)",
        ),
        (
            Reply(finish_reason="length"),
            4,
            f"INTERNAL: vllm ({LLAMA} at {{url}}/v1): answer cut at the 1024-token output "
            "limit (finish reason length)",
        ),
    ],
    ids=["connection-dropped", "error-event", "cut-at-max-tokens"],
)
async def test_stream_restarts_when_a_backend_fails_mid_answer(
    make_stub: StubFactory, openai: Running[OpenAIFake], reply: Reply, sent: int, failure: str
) -> None:
    stub = await make_stub()
    openai.fake.script(reply)
    events = [e async for e in stub.GenerateStream(stream_request())]
    kinds = [e.WhichOneof("event") for e in events]
    restart = kinds.index("restart")
    assert kinds[:restart] == ["delta"] * sent
    assert f"vllm failed mid-answer: {failure.format(url=openai.url)}" in (
        events[restart].restart.reason
    )
    assert kinds[-1] == "final" and set(kinds[restart + 1 : -1]) == {"delta"}
    after = "".join(e.delta for e in events[restart + 1 : -1])
    final = events[-1].final
    assert after == final.text == DEFAULT_TEXT
    assert final.backend == "gemini-flash"
    assert final.route.fallbacks[0].backend == "vllm"


@pytest.mark.parametrize(
    ("tier", "reply", "cause", "message"),
    [
        (common_pb2.TIER_SIMPLE, Reply(finish_reason="length"), "truncated", "answer cut at"),
        (
            common_pb2.TIER_SIMPLE,
            Reply(finish_reason="content_filter"),
            "answer_blocked",
            "content filter (finish reason content_filter)",
        ),
        (
            common_pb2.TIER_COMPLEX,
            GeminiReply(block_reason="PROHIBITED_CONTENT"),
            "prompt_blocked",
            "prompt blocked (PROHIBITED_CONTENT: ",
        ),
        (
            common_pb2.TIER_COMPLEX,
            GeminiReply(finish_reason="SAFETY"),
            "answer_blocked",
            "content filter (finish reason SAFETY)",
        ),
        (
            common_pb2.TIER_COMPLEX,
            GeminiReply(finish_reason="MAX_TOKENS"),
            "truncated",
            "answer cut at the 1280-token output limit (finish reason MAX_TOKENS)",
        ),
    ],
    ids=[
        "vllm-length",
        "vllm-content-filter",
        "gemini-prompt-blocked",
        "gemini-safety",
        "gemini-max-tokens",
    ],
)
async def test_a_reply_that_is_no_answer_falls_back_with_its_cause_and_spares_the_breaker(
    make_stub: StubFactory,
    openai: Running[OpenAIFake],
    vertex: Running[VertexFake],
    tier: common_pb2.Tier.ValueType,
    reply: Reply | GeminiReply,
    cause: str,
    message: str,
) -> None:
    stub = await make_stub(generation_breaker_failures=1)
    first, fallback = FIRST_AND_NEXT[tier]
    if isinstance(reply, Reply):
        openai.fake.script(reply)
    else:
        vertex.fake.script(reply)
    labels = {"from_backend": first, "cause": cause}
    before = REGISTRY.get_sample_value("rag_generation_fallbacks_total", labels) or 0.0
    answered = await stub.Generate(request(tier=tier))
    assert (answered.backend, answered.text) == (fallback, DEFAULT_TEXT)
    (attempt,) = answered.route.fallbacks
    assert (attempt.backend, attempt.error_code) == (first, "INTERNAL")
    assert message in attempt.message and attempt.message.startswith(f"{first} (")
    assert REGISTRY.get_sample_value("rag_generation_fallbacks_total", labels) == before + 1
    again = await stub.Generate(request(tier=tier))
    assert again.backend == first, "one refused prompt does not open the backend's breaker"


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_when_no_backend_answers_usably_the_status_blames_the_backends(
    make_stub: StubFactory,
    openai: Running[OpenAIFake],
    vertex: Running[VertexFake],
    streaming: bool,
) -> None:
    stub = await make_stub(generation_simple_chain="gemini-flash,vllm")
    vertex.fake.script(GeminiReply(block_reason="SAFETY"))
    openai.fake.script(Reply(error_after_chunks=0) if streaming else Reply(finish_reason="length"))
    with pytest.raises(aio.AioRpcError) as raised:
        if streaming:
            async for _ in stub.GenerateStream(stream_request()):
                pass
        else:
            await stub.Generate(request())
    # the last backend's failure: vLLM's error event (code 400) is UNAVAILABLE
    expected = grpc.StatusCode.UNAVAILABLE if streaming else grpc.StatusCode.INTERNAL
    assert raised.value.code() == expected
    details = raised.value.details() or ""
    assert details.startswith("every backend of the simple chain failed: gemini-flash (")
    assert "prompt blocked (SAFETY: " in details
    assert ("error inside the stream" if streaming else "answer cut at") in details


async def test_ungrounded_simple_answer_is_escalated_to_the_strong_model(
    make_stub: StubFactory, openai: Running[OpenAIFake]
) -> None:
    stub = await make_stub()
    openai.fake.script(Reply(text="Employees get unlimited vacation on Mars [1]."))
    reply = await stub.Generate(request(tier=common_pb2.TIER_UNSPECIFIED))
    route = reply.route
    assert route.reason.startswith("simple: "), "the router's own decision is kept"
    assert route.tier == common_pb2.TIER_COMPLEX
    assert route.escalation.startswith("grounding 0.00 < 0.80 for vllm's answer")
    assert (reply.backend, reply.text) == ("gemini-pro", DEFAULT_TEXT)
    assert reply.grounding.score == 1.0
    assert reply.usage.input_tokens == 321 + 400, "both calls were paid for"


async def test_escalation_is_a_restart_in_a_stream(
    make_stub: StubFactory, openai: Running[OpenAIFake]
) -> None:
    stub = await make_stub()
    openai.fake.script(Reply(text="Employees get unlimited vacation on Mars [1]."))
    events = [e async for e in stub.GenerateStream(stream_request(common_pb2.TIER_UNSPECIFIED))]
    kinds = [e.WhichOneof("event") for e in events]
    assert "restart" in kinds
    assert "grounding" in events[kinds.index("restart")].restart.reason
    assert events[-1].final.backend == "gemini-pro"


async def test_a_forced_tier_is_never_escalated(
    make_stub: StubFactory, openai: Running[OpenAIFake]
) -> None:
    stub = await make_stub()
    openai.fake.script(Reply(text="Employees get unlimited vacation on Mars [1]."))
    reply = await stub.Generate(request(tier=common_pb2.TIER_SIMPLE))
    assert reply.backend == "vllm"
    assert reply.grounding.unsupported_sentences == [
        "Employees get unlimited vacation on Mars [1]."
    ]


async def test_model_decline_is_a_decline(
    make_stub: StubFactory, vertex: Running[VertexFake]
) -> None:
    stub = await make_stub()
    vertex.fake.script(GeminiReply(text=DECLINE_TEXT))
    reply = await stub.Generate(request(tier=common_pb2.TIER_COMPLEX))
    assert reply.declined and reply.backend == "gemini-pro"
    assert list(reply.cited_sources) == []


async def test_open_breaker_skips_the_backend_without_calling_it(
    make_stub: StubFactory, openai: Running[OpenAIFake]
) -> None:
    stub = await make_stub(generation_breaker_failures=2, generation_breaker_reset_seconds=600)
    openai.fake.script(Reply(status=500), Reply(status=500))
    for _ in range(2):
        assert (await stub.Generate(request())).backend == "gemini-flash"
    calls = len(openai.fake.requests)
    reply = await stub.Generate(request())
    assert len(openai.fake.requests) == calls, "an open breaker sends nothing"
    assert reply.backend == "gemini-flash"
    assert "circuit breaker open" in reply.route.fallbacks[0].message


async def test_ab_arms_are_sticky_and_reported(make_stub: StubFactory) -> None:
    arms = {
        "complex": [
            {"name": "pro", "backend": "gemini-pro", "weight": 50},
            {"name": "flash", "backend": "gemini-flash", "weight": 50},
        ]
    }
    stub = await make_stub(generation_ab_arms=arms)
    by_key: dict[str, set[str]] = {}
    for n in range(12):
        for _ in range(2):
            reply = await stub.Generate(
                request(tier=common_pb2.TIER_COMPLEX, routing_key=f"user-{n}")
            )
            by_key.setdefault(f"user-{n}", set()).add(f"{reply.route.arm}/{reply.backend}")
    assert all(len(seen) == 1 for seen in by_key.values()), "one arm per key"
    assert {next(iter(s)) for s in by_key.values()} == {"pro/gemini-pro", "flash/gemini-flash"}
    report = await stub.GetRouterReport(generation_pb2.GetRouterReportRequest())
    assert [(a.arm, a.backend) for a in report.arms] == [
        ("pro", "gemini-pro"),
        ("flash", "gemini-flash"),
    ]
    assert sum(a.requests for a in report.arms) == 24
    for arm in report.arms:
        assert arm.tier == common_pb2.TIER_COMPLEX
        assert arm.input_tokens == 400 * arm.requests
        assert arm.mean_grounding == 1.0 and arm.decline_rate == 0.0
    usage = {(u.tier, u.model): u for u in report.usage}
    pro = usage[(common_pb2.TIER_COMPLEX, "gemini-2.5-pro")]
    assert pro.answers == report.arms[0].requests
    assert pro.cost_usd == pytest.approx(pro.answers * (400 * 1.25 + 50 * 10.0) / 1e6)


async def test_unknown_tier_is_invalid_argument(make_stub: StubFactory) -> None:
    stub = await make_stub()
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.Generate(request(tier=7))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown tier 7" in (raised.value.details() or "")
