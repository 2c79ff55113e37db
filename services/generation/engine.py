"""The generation engine: route, assign an A/B arm, run the backend chain, check
grounding, escalate, account. Plain Python; the servicer is its gRPC edge.

One request goes like this:

1. The router picks a tier (``simple`` or ``complex``) from the question and
   the retrieval scores, unless the request forces one; the decision and its
   reason travel with the answer.
2. If the tier has A/B arms, the routing key (a user or session id, else the
   question) picks one by hash, so a key always gets the same arm; the arm's
   backend goes first in the tier's chain.
3. The chain's backends are tried in order. Each call has a deadline; a
   backend whose circuit breaker is open is skipped at once. A failure
   (down, 5xx, 429, timeout, malformed output) moves on to the next backend
   and is recorded on the answer; when every backend failed, the request fails
   with the last failure's status and a message naming every backend tried.
   In a stream, a backend that fails after sending text is followed by a
   :class:`Restart` event, so the client drops the partial text. A reply that
   is no complete answer (an error inside the stream, an answer cut at the
   output limit, a blocked prompt or a filtered answer: see ``llm.py``) is
   such a failure. The last three (:class:`UnusableAnswerError`) say nothing
   of the backend's health, so they do not count against its breaker, and
   they would come again: the backend is not asked again in the request
   (an escalation skips it).
4. The answer's grounding is checked. If a ``simple`` answer scores below
   the grounding threshold (and the tier was not forced), the question is
   escalated: the ``complex`` chain writes a new answer, which replaces the
   first one (a stream gets a :class:`Restart` first). Both calls' tokens are
   paid, so both are counted.
5. Tokens and cost per (tier, model), per-arm totals and metrics are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass

from services.common.errors import DeadlineError, PlatformError, UnavailableError
from services.generation import metrics
from services.generation.backends import (
    AnswerGenerator,
    GeneratedAnswer,
    SourcePassage,
    validate_request,
)
from services.generation.grounding import (
    DECLINE_GROUNDING_SCORE,
    Grounding,
    GroundingChecker,
    LexicalGroundingChecker,
)
from services.generation.llm import UnusableAnswerError, failure_cause
from services.generation.report import ArmKey, ArmTotals, Ledger
from services.generation.resilience import CircuitBreaker
from services.generation.router import COMPLEX, SIMPLE, TIERS, Feature, Router
from services.runtime.costs import PriceTable

log = logging.getLogger(__name__)


def _late(backend: str, model: str, seconds: float) -> DeadlineError:
    return DeadlineError(f"{backend} ({model}): no answer within its {seconds:g} s deadline")


def _skip(attempts: list[Attempt], skipped: Attempt, cause: str, has_next: bool) -> None:
    """Record a backend the chain passed over without calling it."""
    attempts.append(skipped)
    if has_next:
        metrics.FALLBACKS.labels(from_backend=skipped.backend, cause=cause).inc()


def _count_arm(arm: Arm | None) -> None:
    if arm is not None:
        metrics.AB_REQUESTS.labels(arm=arm.name).inc()


@dataclass(frozen=True)
class Backend:
    """A configured backend: its generator, the deadline of each call, its breaker."""

    generator: AnswerGenerator
    deadline_seconds: float
    breaker: CircuitBreaker


@dataclass(frozen=True)
class Arm:
    """An A/B arm of a tier: requests assigned to it try `backend` first."""

    name: str
    backend: str
    weight: int


@dataclass(frozen=True)
class GenerationRequest:
    question: str
    sources: Sequence[SourcePassage]
    tier: str | None = None
    """Forced tier, or None to let the router decide."""
    routing_key: str = ""
    """Sticky A/B key; the question when empty."""


@dataclass(frozen=True)
class Attempt:
    """A backend that failed (or was skipped) before the answer was written."""

    backend: str
    model: str
    error_code: str
    message: str
    seconds: float


@dataclass(frozen=True)
class Route:
    """How an answer was routed (mirrors the contract's Route)."""

    tier: str
    score: float
    threshold: float
    reason: str
    features: list[Feature]
    backend: str
    model: str
    arm: str
    fallbacks: list[Attempt]
    overridden: bool
    escalation: str = ""


@dataclass(frozen=True)
class RoutedAnswer:
    """The final result of one request."""

    answer: GeneratedAnswer
    route: Route
    grounding: Grounding
    input_tokens: int
    """All model calls of the request (an escalated one made two)."""
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class Restart:
    """Stream event: drop the text streamed so far, a new answer follows."""

    reason: str


@dataclass(frozen=True)
class _ChainResult:
    """The answer of a chain and the failed attempts before it."""

    answer: GeneratedAnswer
    attempts: list[Attempt]


class GenerationEngine:
    """Answers requests through the router, arms and backend chains (see the module docstring)."""

    def __init__(
        self,
        *,
        router: Router,
        backends: Mapping[str, Backend],
        chains: Mapping[str, Sequence[str]],
        arms: Mapping[str, Sequence[Arm]],
        checker: GroundingChecker,
        grounding_threshold: float,
        prices: PriceTable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for tier in TIERS:
            if not chains.get(tier):
                raise ValueError(f"no backend chain configured for tier {tier!r}")
        for tier, names in chains.items():
            if tier not in TIERS:
                raise ValueError(f"chain for unknown tier {tier!r}; tiers: {', '.join(TIERS)}")
            unknown = [n for n in names if n not in backends]
            if unknown:
                raise ValueError(f"{tier} chain names unknown backends {unknown}")
        for tier, tier_arms in arms.items():
            if tier not in TIERS:
                raise ValueError(f"A/B arms for unknown tier {tier!r}")
            for arm in tier_arms:
                if arm.backend not in backends:
                    raise ValueError(f"arm {arm.name!r} names unknown backend {arm.backend!r}")
                if arm.weight <= 0:
                    raise ValueError(f"arm {arm.name!r} has weight {arm.weight}; must be > 0")
        self._router = router
        self._backends = dict(backends)
        self._chains = {tier: list(names) for tier, names in chains.items()}
        self._arms = {tier: list(a) for tier, a in arms.items() if a}
        self._checker = checker
        self._local_checker = LexicalGroundingChecker()
        self._grounding_threshold = grounding_threshold
        self._prices = prices
        self._clock = clock
        self.ledger = Ledger(
            [
                ArmTotals(a.name, t, a.backend)
                for t, tier_arms in self._arms.items()
                for a in tier_arms
            ],
            clock=clock,
        )

    # ------------------------------------------------------------------ public

    async def generate(self, request: GenerationRequest) -> RoutedAnswer:
        """The routed, checked answer (backends called without streaming)."""
        final: RoutedAnswer | None = None
        async with contextlib.aclosing(self._run(request, streaming=False)) as events:
            async for event in events:
                if isinstance(event, RoutedAnswer):
                    final = event
        assert final is not None  # _run ends with the answer or raises
        return final

    def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[str | Restart | RoutedAnswer, None]:
        """Text deltas (and Restart events), then the RoutedAnswer (last)."""
        return self._run(request, streaming=True)

    # ------------------------------------------------------------------ flow

    async def _run(
        self, request: GenerationRequest, *, streaming: bool
    ) -> AsyncGenerator[str | Restart | RoutedAnswer, None]:
        validate_request(request.question, request.sources)
        started = self._clock()
        key = request.routing_key or request.question
        decision = self._router.decide(request.question, request.sources, request.tier)
        metrics.ROUTER_DECISIONS.labels(tier=decision.tier, reason_kind=decision.reason_kind).inc()
        tier, arm = decision.tier, self._arm_for(decision.tier, key)
        _count_arm(arm)

        unusable: dict[str, PlatformError] = {}  # backends whose reply could not be used
        result: _ChainResult | None = None
        async with contextlib.aclosing(
            self._chain(tier, arm, request, streaming, unusable)
        ) as events:
            async for event in events:
                if isinstance(event, _ChainResult):
                    result = event
                else:
                    yield event
        assert result is not None  # _chain ends with a result or raises
        grounding = await self._ground(result.answer, request.sources)
        calls = [(tier, result.answer)]
        fallbacks = list(result.attempts)
        escalation = ""

        strong_arm = self._arm_for(COMPLEX, key)
        reason = self._escalation_reason(decision.overridden, tier, strong_arm, result, grounding)
        if reason:
            metrics.ROUTER_DECISIONS.labels(tier=COMPLEX, reason_kind="grounding_escalation").inc()
            _count_arm(strong_arm)
            if streaming:
                yield Restart(f"{reason}: rewriting with the {COMPLEX} tier")
            second: _ChainResult | None = None
            try:
                async with contextlib.aclosing(
                    self._chain(COMPLEX, strong_arm, request, streaming, unusable)
                ) as events:
                    async for event in events:
                        if isinstance(event, _ChainResult):
                            second = event
                        else:
                            yield event
            except PlatformError as err:
                escalation = f"{reason}; escalation failed, first answer kept: {err}"
            else:
                assert second is not None
                tier, arm, result = COMPLEX, strong_arm, second
                grounding = await self._ground(second.answer, request.sources)
                calls.append((COMPLEX, second.answer))
                fallbacks += second.attempts
                escalation = reason

        cost = sum(self._account(t, a) for t, a in calls)
        input_tokens = sum(a.input_tokens for _, a in calls)
        output_tokens = sum(a.output_tokens for _, a in calls)
        answer = result.answer
        if not answer.declined:
            metrics.GROUNDING_SCORE.observe(grounding.score)
        if arm is not None:
            self.ledger.record_answer(
                ArmKey(tier, arm.name),
                latency_seconds=self._clock() - started,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
                grounding=None if answer.declined else grounding.score,
                fell_back=answer.backend != arm.backend,
            )
        route = Route(
            tier=tier,
            score=decision.score,
            threshold=decision.threshold,
            reason=decision.reason,
            features=decision.features,
            backend=answer.backend,
            model=answer.model,
            arm=arm.name if arm else "",
            fallbacks=fallbacks,
            overridden=decision.overridden,
            escalation=escalation,
        )
        yield RoutedAnswer(answer, route, grounding, input_tokens, output_tokens, cost)

    def _escalation_reason(
        self,
        overridden: bool,
        tier: str,
        strong_arm: Arm | None,
        result: _ChainResult,
        grounding: Grounding,
    ) -> str:
        """Why a simple answer goes to the strong tier, or "" when it does not."""
        answer = result.answer
        if overridden or tier != SIMPLE or answer.declined:
            return ""
        if grounding.score >= self._grounding_threshold:
            return ""
        if self._order(COMPLEX, strong_arm)[0] == answer.backend:
            return ""  # the strong tier would ask the same backend again
        return (
            f"grounding {grounding.score:.2f} < {self._grounding_threshold:.2f} "
            f"for {answer.backend}'s answer"
        )

    def _arm_for(self, tier: str, key: str) -> Arm | None:
        """The tier's A/B arm for `key`: stable hash, split by weight."""
        arms = self._arms.get(tier)
        if not arms:
            return None
        digest = hashlib.sha256(f"{tier}\x00{key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % sum(a.weight for a in arms)
        for arm in arms:
            if point < arm.weight:
                return arm
            point -= arm.weight
        raise AssertionError("unreachable: point < total weight")

    def _account(self, tier: str, answer: GeneratedAnswer) -> float:
        """Record one model call's tokens and cost; returns the cost."""
        cost = self._prices.cost(answer.model, answer.input_tokens, answer.output_tokens)
        labels = {"model": answer.model, "route": tier}
        metrics.TOKENS.labels(kind="input", **labels).inc(answer.input_tokens)
        metrics.TOKENS.labels(kind="output", **labels).inc(answer.output_tokens)
        metrics.COST.labels(**labels).inc(cost)
        self.ledger.record_usage(
            tier, answer.model, answer.input_tokens, answer.output_tokens, cost
        )
        return cost

    async def _ground(self, answer: GeneratedAnswer, sources: Sequence[SourcePassage]) -> Grounding:
        """The configured checker's verdict; the local checker's when it fails."""
        if answer.declined:
            return Grounding(DECLINE_GROUNDING_SCORE, [], self._checker.name, 0)
        try:
            return await self._checker.check(answer.text, sources)
        except PlatformError as err:
            log.warning(
                "grounding check failed; using the local checker",
                extra={"checker": self._checker.name, "error": str(err)},
            )
            return await self._local_checker.check(answer.text, sources)

    # ------------------------------------------------------------------ chain

    def _order(self, tier: str, arm: Arm | None) -> list[str]:
        chain = self._chains[tier]
        if arm is None:
            return chain
        return [arm.backend, *(name for name in chain if name != arm.backend)]

    async def _chain(
        self,
        tier: str,
        arm: Arm | None,
        request: GenerationRequest,
        streaming: bool,
        unusable: dict[str, PlatformError],
    ) -> AsyncGenerator[str | Restart | _ChainResult, None]:
        """Try the tier's backends in order until one answers (see the module
        docstring). `unusable` holds the request's UnusableAnswerErrors by
        backend: those backends are skipped, and this chain's are added."""
        names = self._order(tier, arm)
        attempts: list[Attempt] = []
        failure: PlatformError | None = None
        for position, name in enumerate(names):
            backend = self._backends[name]
            model = backend.generator.model
            has_next = position < len(names) - 1
            if name in unusable:
                failure = unusable[name]
                skipped = Attempt(
                    name, model, failure.code_name, f"{name}: not asked again: {failure}", 0.0
                )
                _skip(attempts, skipped, failure_cause(failure), has_next)
                continue
            if not backend.breaker.allow():
                skipped = Attempt(
                    name,
                    model,
                    UnavailableError.code_name,
                    f"{name}: circuit breaker open after repeated failures; next trial in "
                    f"{backend.breaker.retry_in():.0f} s",
                    0.0,
                )
                _skip(attempts, skipped, "circuit_open", has_next)
                continue
            started = self._clock()
            sent_text = False
            answer: GeneratedAnswer | None = None
            try:
                async with contextlib.aclosing(
                    self._call(name, backend, request, streaming)
                ) as events:
                    async for event in events:
                        if isinstance(event, GeneratedAnswer):
                            answer = event
                        else:
                            sent_text = True
                            yield event
            except PlatformError as err:
                failure = err
            except Exception as err:  # a bug in a backend must not take the chain down
                log.exception("backend raised an unexpected error", extra={"backend": name})
                failure = UnavailableError(f"{name}: internal error: {type(err).__name__}: {err}")
            except BaseException:  # cancelled or closed by the caller: proves nothing
                backend.breaker.record_cancelled()
                raise
            else:
                if answer is None:
                    failure = UnavailableError(f"{name}: stream ended without an answer")
                else:
                    backend.breaker.record_success()
                    yield _ChainResult(answer, attempts)
                    return
            if isinstance(failure, UnusableAnswerError):
                backend.breaker.record_cancelled()  # the backend is up: no sign of its health
                unusable[name] = failure
            else:
                backend.breaker.record_failure()
            code = failure.code_name
            metrics.BACKEND_ERRORS.labels(backend=name, code=code).inc()
            if has_next:
                metrics.FALLBACKS.labels(from_backend=name, cause=failure_cause(failure)).inc()
            attempts.append(Attempt(name, model, code, str(failure), self._clock() - started))
            if sent_text:
                yield Restart(f"{name} failed mid-answer: {code}: {failure}")
        if arm is not None:
            self.ledger.record_error(ArmKey(tier, arm.name))
        tried = "; ".join(a.message for a in attempts)
        error_type = type(failure) if failure is not None else UnavailableError
        raise error_type(f"every backend of the {tier} chain failed: {tried}")

    async def _call(
        self, name: str, backend: Backend, request: GenerationRequest, streaming: bool
    ) -> AsyncGenerator[str | GeneratedAnswer, None]:
        """One backend call under its deadline (never yielding inside the timeout
        scope, so the deadline only ever cancels the backend's own work)."""
        generator = backend.generator
        deadline = asyncio.get_running_loop().time() + backend.deadline_seconds
        if not streaming:
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await generator.generate(request.question, request.sources)
            except TimeoutError:
                raise _late(name, generator.model, backend.deadline_seconds) from None
            yield answer
            return
        async with contextlib.aclosing(
            generator.stream(request.question, request.sources)
        ) as events:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _late(name, generator.model, backend.deadline_seconds) from None
                yield event
