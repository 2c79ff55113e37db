"""One question end to end: embed → retrieve → generate → verify citations.

The answer is only as trustworthy as its citations, so this service re-checks
them: every [n] in the final text must point at a chunk it actually supplied to
generation; anything else is removed and counted.
"""

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from ragplatform.v1 import (
    common_pb2,
    embedding_pb2,
    generation_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.common.citations import keep_supplied_citations
from services.common.errors import InvalidInputError
from services.runtime.clients import PlatformClients
from services.runtime.errors import downstream
from services.runtime.telemetry import stage_span


@dataclass(frozen=True)
class QueryLimits:
    """Bounds on a question (from settings)."""

    default_top_k: int
    max_top_k: int
    max_question_chars: int


class AskParams(Protocol):
    """Fields shared by AskRequest and AskStreamRequest."""

    @property
    def question(self) -> str: ...
    @property
    def top_k(self) -> int: ...
    @property
    def filter(self) -> common_pb2.MetadataFilter: ...
    @property
    def debug(self) -> bool: ...
    @property
    def tier(self) -> common_pb2.Tier.ValueType: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def retrieval_mode(self) -> common_pb2.RetrievalMode.ValueType: ...
    @property
    def mmr_lambda(self) -> float: ...


@dataclass
class _Timer:
    timings: list[common_pb2.StageTiming] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with stage_span(name):  # one trace span per stage; free when tracing is off
                yield
        finally:
            self.timings.append(
                common_pb2.StageTiming(stage=name, seconds=time.perf_counter() - start)
            )


@dataclass
class _Retrieved:
    """State of one question between retrieval and the final answer."""

    request_id: str
    timer: _Timer
    started: float
    results: list[common_pb2.ScoredChunk]
    sources: list[generation_pb2.Source]


class QueryPipeline:
    """Answers questions by calling the embedding, retrieval and generation services."""

    def __init__(self, clients: PlatformClients, limits: QueryLimits) -> None:
        self._clients = clients
        self._limits = limits

    def _validated(self, params: AskParams) -> tuple[str, int]:
        question = params.question.strip()
        if not question:
            raise InvalidInputError("question is empty")
        if len(question) > self._limits.max_question_chars:
            raise InvalidInputError(
                f"question is {len(question)} characters; the limit is "
                f"{self._limits.max_question_chars}"
            )
        top_k = params.top_k or self._limits.default_top_k
        if not 1 <= top_k <= self._limits.max_top_k:
            raise InvalidInputError(f"top_k {top_k} is out of range 1..{self._limits.max_top_k}")
        return question, top_k

    async def _retrieve(self, params: AskParams) -> tuple[str, _Retrieved]:
        question, top_k = self._validated(params)
        started = time.perf_counter()
        timer = _Timer()
        settings = self._clients.settings
        with timer.stage("embed"), downstream("embedding", settings.embedding_addr):
            embedded = await self._clients.embedding.EmbedQueries(
                embedding_pb2.EmbedQueriesRequest(texts=[question])
            )
        with timer.stage("retrieve"), downstream("retrieval", settings.retrieval_addr):
            found = await self._clients.retrieval.Search(
                retrieval_pb2.SearchRequest(
                    vector=embedded.vectors[0],
                    top_k=top_k,
                    filter=params.filter,
                    query_text=question,
                    mode=params.retrieval_mode,
                    mmr_lambda=params.mmr_lambda,
                )
            )
        results = list(found.results)
        sources = [
            generation_pb2.Source(number=n, chunk=r.chunk, score=r.score)
            for n, r in enumerate(results, start=1)
        ]
        return question, _Retrieved(uuid.uuid4().hex, timer, started, results, sources)

    def _answer(
        self, state: _Retrieved, generated: generation_pb2.GenerateResponse, debug: bool
    ) -> query_pb2.AskResponse:
        with state.timer.stage("verify"):
            check = keep_supplied_citations(generated.text, {s.number for s in state.sources})
            by_number = {s.number: s for s in state.sources}
            citations = [
                query_pb2.Citation(
                    number=n,
                    document_id=by_number[n].chunk.document_id,
                    title=by_number[n].chunk.title,
                    source_uri=by_number[n].chunk.source_uri,
                    chunk_id=by_number[n].chunk.chunk_id,
                    score=by_number[n].score,
                    page=by_number[n].chunk.page,
                    section=by_number[n].chunk.section,
                )
                for n in check.valid
            ]
        state.timer.timings.append(
            common_pb2.StageTiming(stage="total", seconds=time.perf_counter() - state.started)
        )
        response = query_pb2.AskResponse(
            answer=check.text,
            citations=citations,
            declined=generated.declined,
            backend=generated.backend,
            model=generated.model,
            usage=generated.usage,
            timings=state.timer.timings,
            request_id=state.request_id,
            route=generated.route,
            cost_usd=generated.cost_usd,
            grounding=generated.grounding,
        )
        if debug:
            response.debug.CopyFrom(
                query_pb2.AskDebug(
                    retrieved=state.results,
                    prompt=generated.prompt,
                    selection=generated.selection,
                    invalid_citations_removed=generated.invalid_citations_removed
                    + len(check.removed),
                )
            )
        return response

    async def ask(self, params: AskParams) -> query_pb2.AskResponse:
        """The complete, verified answer."""
        question, state = await self._retrieve(params)
        address = self._clients.settings.generation_addr
        with state.timer.stage("generate"), downstream("generation", address):
            generated = await self._clients.generation.Generate(
                generation_pb2.GenerateRequest(
                    question=question,
                    sources=state.sources,
                    debug=params.debug,
                    tier=params.tier,
                    routing_key=params.routing_key,
                )
            )
        return self._answer(state, generated, params.debug)

    async def ask_stream(self, params: AskParams) -> AsyncIterator[query_pb2.AskStreamResponse]:
        """Text deltas as generation writes them, then the verified answer.

        Deltas are shown to users as they arrive; the final answer is the reference
        (its citations are verified), and clients replace the streamed text with it.
        A restart event (a backend failed mid-answer, or the answer was escalated
        to the strong model) tells clients to drop the deltas received so far.
        """
        question, state = await self._retrieve(params)
        address = self._clients.settings.generation_addr
        final: generation_pb2.GenerateResponse | None = None
        with state.timer.stage("generate"), downstream("generation", address):
            stream = self._clients.generation.GenerateStream(
                generation_pb2.GenerateStreamRequest(
                    question=question,
                    sources=state.sources,
                    debug=params.debug,
                    tier=params.tier,
                    routing_key=params.routing_key,
                )
            )
            async for event in stream:
                if event.HasField("final"):
                    final = event.final
                elif event.HasField("restart"):
                    yield query_pb2.AskStreamResponse(restart=event.restart)
                else:
                    yield query_pb2.AskStreamResponse(delta=event.delta)
        if final is None:
            raise InvalidInputError("generation stream ended without a final answer")
        yield query_pb2.AskStreamResponse(final=self._answer(state, final, params.debug))
