"""One question end to end: embed → retrieve → generate → verify citations.

The answer is only as trustworthy as its citations, so this service re-checks
them: every [n] in the final text must point at a chunk it actually supplied to
generation; anything else is removed and counted.

Every question acts for its caller: the tenant and access labels are checked
before any downstream call and passed to retrieval, whose engine filter confines
the sources to what that caller may see.

With an AnswerCache, a question is first looked up by its exact key, before
anything is embedded (a hit costs no model call); then, if the semantic cache is
on, by its vector after retrieval. A fresh answer is stored once the versions of
the documents it cites are pinned (see services/query/answer_cache.py).
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragplatform.v1 import (
    common_pb2,
    generation_pb2,
    query_pb2,
    retrieval_pb2,
)
from services.common.citations import keep_supplied_citations
from services.common.errors import InvalidInputError, UnavailableError
from services.common.search import search_filter_from_proto, validate_filter
from services.common.tenancy import Caller, validate_caller
from services.query.answer_cache import AnswerCache, AnswerScope, CachedAnswer, DocumentVersion
from services.runtime.clients import PlatformClients
from services.runtime.convert import from_proto
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
    @property
    def caller(self) -> common_pb2.Caller: ...
    @property
    def bypass_cache(self) -> bool: ...


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

    question: str
    request_id: str
    timer: _Timer
    started: float
    results: list[common_pb2.ScoredChunk]
    sources: list[generation_pb2.Source]
    search: retrieval_pb2.SearchRequest
    """The search that found `results` (the answer cache pins versions with it)."""

    def generation_fields(self, params: "AskParams") -> dict[str, Any]:
        """The fields of the unary and the streaming generation request alike."""
        return {
            "question": self.question,
            "sources": self.sources,
            "debug": params.debug,
            "tier": params.tier,
            "routing_key": params.routing_key,
        }


@dataclass
class _CacheTurn:
    """One question's use of the answer cache, from the exact lookup to the store."""

    scope: AnswerScope
    lookup: bool
    """False for bypass_cache: the answer is made afresh, and still stored."""
    timer: _Timer
    started: float
    pinning: "asyncio.Task[dict[str, DocumentVersion] | None] | None" = None

    def cancel(self) -> None:
        """Stop pinning versions (the answer will not be stored)."""
        if self.pinning is not None:
            self.pinning.cancel()


@dataclass
class _Prepared:
    """A question after the answer cache and retrieval: a cached answer to serve
    as it is, or the retrieved sources to generate one from."""

    turn: _CacheTurn | None
    cached: query_pb2.AskResponse | None = None
    retrieved: _Retrieved | None = None

    @property
    def state(self) -> _Retrieved:
        """The retrieved sources (only when nothing was `cached`)."""
        if self.retrieved is None:
            raise RuntimeError("a cached answer has no retrieval state")
        return self.retrieved


def _served_from_cache(
    turn: _CacheTurn,
    timer: _Timer,
    entry: CachedAnswer,
    kind: query_pb2.CacheHit.Kind.ValueType,
    similarity: float = 0.0,
) -> query_pb2.AskResponse:
    """A cached answer as this request's response: its own request id and timings,
    the hit described, and no token usage or cost (nothing was generated)."""
    response = query_pb2.AskResponse()
    response.CopyFrom(entry.response)
    response.request_id = uuid.uuid4().hex
    response.ClearField("usage")
    response.cost_usd = 0.0
    response.cache.CopyFrom(
        query_pb2.CacheHit(
            kind=kind,
            age_seconds=max(0.0, time.time() - entry.created_at_unix),
            similarity=similarity,
            cached_question=entry.question,
        )
    )
    timer.timings.append(
        common_pb2.StageTiming(stage="total", seconds=time.perf_counter() - turn.started)
    )
    response.timings.extend(timer.timings)
    return response


class QueryPipeline:
    """Answers questions by calling the embedding, retrieval and generation services."""

    def __init__(
        self,
        clients: PlatformClients,
        limits: QueryLimits,
        answers: AnswerCache | None = None,
    ) -> None:
        self._clients = clients
        self._limits = limits
        self._answers = answers

    def _validated(self, params: AskParams) -> tuple[str, int]:
        """(question, top_k) of a well-formed request; raises InvalidInputError naming
        the field otherwise, the caller's tenant first (before anything is read)."""
        validate_caller(from_proto(params.caller, Caller))
        validate_filter(search_filter_from_proto(params.filter))
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

    async def _retrieve(self, params: AskParams, question: str, top_k: int) -> _Retrieved:
        """Embed the question, then search with its vector."""
        started = time.perf_counter()
        timer = _Timer()
        settings = self._clients.settings
        with timer.stage("embed"):
            embedded = await self._clients.embedders.embed_question(question)
        search = retrieval_pb2.SearchRequest(
            vector=embedded.vectors[0],
            top_k=top_k,
            filter=params.filter,
            query_text=question,
            mode=params.retrieval_mode,
            mmr_lambda=params.mmr_lambda,
            caller=params.caller,
            embedding_model=embedded.model,
        )
        with timer.stage("retrieve"), downstream("retrieval", settings.retrieval_addr):
            found = await self._clients.retrieval.Search(search)
        self._clients.embedders.observe(found.live_embedding_model)
        results = list(found.results)
        sources = [
            generation_pb2.Source(number=n, chunk=r.chunk, score=r.score)
            for n, r in enumerate(results, start=1)
        ]
        return _Retrieved(question, uuid.uuid4().hex, timer, started, results, sources, search)

    async def _look_up(
        self, params: AskParams, question: str, top_k: int
    ) -> tuple[_CacheTurn | None, query_pb2.AskResponse | None]:
        """The exact lookup, before anything is embedded: (the turn, a cached answer
        or None). No turn when the answer cache is off or cannot be used now."""
        if self._answers is None:
            return None, None
        started = time.perf_counter()
        timer = _Timer()
        with timer.stage("cache"):
            version = await self._answers.index_version()
            if version is None:
                return None, None
            scope = AnswerScope.of(
                params.caller,
                top_k,
                params.filter,
                params.retrieval_mode,
                params.mmr_lambda,
                params.tier,
                params.routing_key,
                version,
            )
            turn = _CacheTurn(scope, not params.bypass_cache, timer, started)
            entry = await self._answers.lookup(scope, question) if turn.lookup else None
        if entry is None:
            return turn, None
        return turn, _served_from_cache(turn, timer, entry, query_pb2.CacheHit.KIND_EXACT)

    async def _prepare(self, params: AskParams) -> _Prepared:
        """A cached answer, or the retrieved sources to generate one from.

        After retrieval, pinning the sources' versions starts (it runs while the
        answer is generated) and the semantic cache, if on, is asked.
        """
        question, top_k = self._validated(params)
        turn, hit = await self._look_up(params, question, top_k)
        if hit is not None:
            return _Prepared(turn, cached=hit)
        state = await self._retrieve(params, question, top_k)
        if turn is None or self._answers is None:
            return _Prepared(None, retrieved=state)
        state.timer.timings[:0] = turn.timer.timings
        state.started = turn.started
        turn.pinning = asyncio.create_task(self._answers.pin_versions(state.search, state.results))
        if turn.lookup and self._answers.semantic is not None:
            with state.timer.stage("semantic_cache"):
                similar = await self._answers.lookup_similar(turn.scope, state.search.vector.values)
            if similar is not None:
                turn.cancel()
                entry, similarity = similar
                kind = query_pb2.CacheHit.KIND_SEMANTIC
                return _Prepared(
                    turn, cached=_served_from_cache(turn, state.timer, entry, kind, similarity)
                )
        return _Prepared(turn, retrieved=state)

    async def _remember(self, prepared: _Prepared, response: query_pb2.AskResponse) -> None:
        """Store a fresh answer once its documents' versions are pinned."""
        turn, state = prepared.turn, prepared.state
        if turn is None or turn.pinning is None or self._answers is None:
            return
        pinned = await turn.pinning
        if pinned is not None:
            vector = state.search.vector.values
            await self._answers.store(turn.scope, state.question, response, pinned, vector)

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
        """The complete, verified answer (from the answer cache when it holds one)."""
        prepared = await self._prepare(params)
        if prepared.cached is not None:
            return prepared.cached
        state = prepared.state
        address = self._clients.settings.generation_addr
        try:
            with state.timer.stage("generate"), downstream("generation", address):
                generated = await self._clients.generation.Generate(
                    generation_pb2.GenerateRequest(**state.generation_fields(params))
                )
            response = self._answer(state, generated, params.debug)
            await self._remember(prepared, response)
        finally:
            if prepared.turn is not None:
                prepared.turn.cancel()
        return response

    async def ask_stream(self, params: AskParams) -> AsyncIterator[query_pb2.AskStreamResponse]:
        """Text deltas as generation writes them, then the verified answer.

        Deltas are shown to users as they arrive; the final answer is the reference
        (its citations are verified), and clients replace the streamed text with it.
        A restart event (a backend failed mid-answer, or the answer was escalated
        to the strong model) tells clients to drop the deltas received so far.
        A cached answer streams as one delta holding its text, then the answer.
        A generation stream that ends without its final answer is UNAVAILABLE,
        naming the generation service: the failure is the service's, not the
        request's.
        """
        prepared = await self._prepare(params)
        if prepared.cached is not None:
            yield query_pb2.AskStreamResponse(delta=prepared.cached.answer)
            yield query_pb2.AskStreamResponse(final=prepared.cached)
            return
        state = prepared.state
        address = self._clients.settings.generation_addr
        final: generation_pb2.GenerateResponse | None = None
        try:
            with state.timer.stage("generate"), downstream("generation", address):
                stream = self._clients.generation.GenerateStream(
                    generation_pb2.GenerateStreamRequest(**state.generation_fields(params))
                )
                async for event in stream:
                    if event.HasField("final"):
                        final = event.final
                    elif event.HasField("restart"):
                        yield query_pb2.AskStreamResponse(restart=event.restart)
                    else:
                        yield query_pb2.AskStreamResponse(delta=event.delta)
            if final is None:
                raise UnavailableError(
                    f"generation service at {address} ended its stream without a final answer"
                )
            response = self._answer(state, final, params.debug)
            await self._remember(prepared, response)
        finally:
            if prepared.turn is not None:
                prepared.turn.cancel()
        yield query_pb2.AskStreamResponse(final=response)
