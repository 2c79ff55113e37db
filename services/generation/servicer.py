"""GenerationService: protobuf in, the GenerationEngine in the middle, protobuf out."""

from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio

from ragplatform.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.common.errors import InvalidInputError
from services.generation.backends import SourcePassage
from services.generation.engine import GenerationEngine, GenerationRequest, Restart, RoutedAnswer
from services.generation.router import COMPLEX, SIMPLE
from services.runtime.convert import to_proto

_TIERS = {common_pb2.TIER_SIMPLE: SIMPLE, common_pb2.TIER_COMPLEX: COMPLEX}
_TIER_ENUM = {name: value for value, name in _TIERS.items()}


def _tier(value: common_pb2.Tier.ValueType) -> str | None:
    if value == common_pb2.TIER_UNSPECIFIED:
        return None
    if value not in _TIERS:
        raise InvalidInputError(f"unknown tier {value}; use TIER_SIMPLE or TIER_COMPLEX")
    return _TIERS[value]


def _request(
    request: generation_pb2.GenerateRequest | generation_pb2.GenerateStreamRequest,
) -> GenerationRequest:
    return GenerationRequest(
        question=request.question,
        sources=_passages(request.sources),
        tier=_tier(request.tier),
        routing_key=request.routing_key,
    )


def _passages(sources: Sequence[generation_pb2.Source]) -> list[SourcePassage]:
    return [
        SourcePassage(
            number=s.number,
            text=s.chunk.text,
            title=s.chunk.title,
            score=s.score,
            document_id=s.chunk.document_id,
        )
        for s in sources
    ]


def _route(routed: RoutedAnswer) -> common_pb2.Route:
    """The contract's Route for an answer's route."""
    route = routed.route
    return common_pb2.Route(
        tier=_TIER_ENUM[route.tier],
        score=route.score,
        threshold=route.threshold,
        reason=route.reason,
        features=[
            common_pb2.RouterFeature(name=f.name, value=f.value, contribution=f.contribution)
            for f in route.features
        ],
        backend=route.backend,
        model=route.model,
        arm=route.arm,
        fallbacks=[to_proto(a, common_pb2.BackendAttempt) for a in route.fallbacks],
        overridden=route.overridden,
        escalation=route.escalation,
    )


def _response(routed: RoutedAnswer, debug: bool) -> generation_pb2.GenerateResponse:
    answer = routed.answer
    grounding = routed.grounding
    return generation_pb2.GenerateResponse(
        text=answer.text,
        cited_sources=answer.cited_sources,
        declined=answer.declined,
        backend=answer.backend,
        model=answer.model,
        usage=common_pb2.TokenUsage(
            input_tokens=routed.input_tokens, output_tokens=routed.output_tokens
        ),
        prompt=answer.prompt if debug else "",
        selection=[to_proto(s, common_pb2.SelectedSentence) for s in answer.selection]
        if debug
        else [],
        route=_route(routed),
        cost_usd=routed.cost_usd,
        grounding=common_pb2.Grounding(
            score=grounding.score,
            unsupported_sentences=grounding.unsupported,
            checker=grounding.checker,
            checked=grounding.checked,
        ),
        invalid_citations_removed=answer.invalid_citations_removed,
    )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """gRPC edge of the generation service."""

    def __init__(self, engine: GenerationEngine) -> None:
        self._engine = engine

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> generation_pb2.GenerateResponse:
        routed = await self._engine.generate(_request(request))
        return _response(routed, request.debug)

    async def GenerateStream(
        self, request: generation_pb2.GenerateStreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        async for event in self._engine.stream(_request(request)):
            if isinstance(event, RoutedAnswer):
                yield generation_pb2.GenerateStreamResponse(final=_response(event, request.debug))
            elif isinstance(event, Restart):
                yield generation_pb2.GenerateStreamResponse(
                    restart=common_pb2.StreamRestart(reason=event.reason)
                )
            else:
                yield generation_pb2.GenerateStreamResponse(delta=event)

    async def GetRouterReport(
        self, request: generation_pb2.GetRouterReportRequest, context: aio.ServicerContext[Any, Any]
    ) -> generation_pb2.GetRouterReportResponse:
        ledger = self._engine.ledger
        return generation_pb2.GetRouterReportResponse(
            arms=[
                generation_pb2.ArmReport(
                    arm=a.arm,
                    tier=_TIER_ENUM[a.tier],
                    backend=a.backend,
                    requests=a.requests,
                    errors=a.errors,
                    mean_latency_seconds=a.mean_latency_seconds,
                    input_tokens=a.input_tokens,
                    output_tokens=a.output_tokens,
                    cost_usd=a.cost_usd,
                    mean_grounding=a.mean_grounding,
                    decline_rate=a.decline_rate,
                    fallback_rate=a.fallback_rate,
                )
                for a in ledger.arms
            ],
            usage=[
                generation_pb2.UsageTotal(
                    tier=_TIER_ENUM[u.tier],
                    model=u.model,
                    answers=u.answers,
                    input_tokens=u.input_tokens,
                    output_tokens=u.output_tokens,
                    cost_usd=u.cost_usd,
                )
                for u in ledger.usage_totals()
            ],
            uptime_seconds=ledger.uptime_seconds(),
        )
