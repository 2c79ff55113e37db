"""GenerationService: protobuf in, an AnswerGenerator in the middle, protobuf out."""

from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio

from ragplatform.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.generation.backends import (
    AnswerGenerator,
    GeneratedAnswer,
    SourcePassage,
    validate_request,
)
from services.runtime.convert import to_proto


def _passages(sources: Sequence[generation_pb2.Source]) -> list[SourcePassage]:
    return [
        SourcePassage(number=s.number, text=s.chunk.text, title=s.chunk.title, score=s.score)
        for s in sources
    ]


def _response(answer: GeneratedAnswer, debug: bool) -> generation_pb2.GenerateResponse:
    return generation_pb2.GenerateResponse(
        text=answer.text,
        cited_sources=answer.cited_sources,
        declined=answer.declined,
        backend=answer.backend,
        model=answer.model,
        usage=common_pb2.TokenUsage(
            input_tokens=answer.input_tokens, output_tokens=answer.output_tokens
        ),
        prompt=answer.prompt if debug else "",
        selection=[to_proto(s, common_pb2.SelectedSentence) for s in answer.selection]
        if debug
        else [],
    )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """gRPC edge of the generation service."""

    def __init__(self, generator: AnswerGenerator) -> None:
        self._generator = generator

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> generation_pb2.GenerateResponse:
        passages = _passages(request.sources)
        validate_request(request.question, passages)
        answer = await self._generator.generate(request.question, passages)
        return _response(answer, request.debug)

    async def GenerateStream(
        self, request: generation_pb2.GenerateStreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        passages = _passages(request.sources)
        validate_request(request.question, passages)
        async for event in self._generator.stream(request.question, passages):
            if isinstance(event, GeneratedAnswer):
                yield generation_pb2.GenerateStreamResponse(final=_response(event, request.debug))
            else:
                yield generation_pb2.GenerateStreamResponse(delta=event)
