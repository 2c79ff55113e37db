"""The generation engine with scripted backends: fallback chains, deadlines, circuit
breakers, A/B arms, grounding escalation, cost and the report, streaming restarts."""

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from services.common.errors import (
    FailedPreconditionError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
)
from services.generation.backends import GeneratedAnswer, SourcePassage
from services.generation.engine import (
    Arm,
    Backend,
    GenerationEngine,
    GenerationRequest,
    Restart,
    RoutedAnswer,
)
from services.generation.grounding import Grounding, GroundingChecker, LexicalGroundingChecker
from services.generation.llm import (
    AnswerBlockedError,
    PromptBlockedError,
    StreamFailedError,
    TruncatedAnswerError,
    UnusableAnswerError,
)
from services.generation.resilience import BreakerState, CircuitBreaker
from services.generation.router import COMPLEX, SIMPLE, Router
from services.runtime.costs import Price, PriceTable

LEAVE = "Full-time employees get 25 days of paid leave per year."
GOOD = "Full-time employees get 25 days of paid leave per year [1]."
BAD = "Leave is unlimited on Mars [1]."
SOURCES = [SourcePassage(1, LEAVE, "Leave", 0.7, "leave")]
HANG = "hang"
"""Script step: never answer (the deadline must end the call)."""


@dataclass
class Broken:
    """Script step: stream `deltas` pieces of the answer, then raise `error`."""

    error: Exception
    deltas: int = 0


@dataclass
class Scripted:
    """A backend that answers from a script: text, an exception, HANG or Broken."""

    name: str
    model: str
    script: deque[object] = field(default_factory=deque)
    calls: int = 0
    default: str = GOOD

    def _next(self) -> object:
        self.calls += 1
        return self.script.popleft() if self.script else self.default

    def _answer(self, text: str) -> GeneratedAnswer:
        declined = text == "DECLINE"
        return GeneratedAnswer(
            text=text,
            cited_sources=[] if declined else [1],
            declined=declined,
            backend=self.name,
            model=self.model,
            input_tokens=100,
            output_tokens=10,
        )

    async def generate(self, question: str, sources: Sequence[SourcePassage]) -> GeneratedAnswer:
        step = self._next()
        if step == HANG:
            await asyncio.Event().wait()
        if isinstance(step, Broken):
            raise step.error
        if isinstance(step, Exception):
            raise step
        return self._answer(str(step))

    async def stream(
        self, question: str, sources: Sequence[SourcePassage]
    ) -> AsyncGenerator[str | GeneratedAnswer, None]:
        step = self._next()
        if step == HANG:
            await asyncio.Event().wait()
        if isinstance(step, Exception):
            raise step
        if isinstance(step, Broken):
            for n in range(step.deltas):
                yield f"piece{n} "
            raise step.error
        text = str(step)
        for word in text.split(" "):
            yield word + " "
        yield self._answer(text)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    engine: GenerationEngine
    backends: dict[str, Scripted]
    breakers: dict[str, CircuitBreaker]
    clock: FakeClock


def rig(
    simple: Sequence[str] = ("small", "medium", "last"),
    complex_chain: Sequence[str] = ("large", "small"),
    arms: dict[str, list[Arm]] | None = None,
    failures: int = 3,
    grounding_threshold: float = 0.8,
    deadline: float = 0.05,
    checker: GroundingChecker | None = None,
) -> Rig:
    clock = FakeClock()
    names = ["small", "medium", "large", "last"]
    backends = {n: Scripted(n, f"{n}-model") for n in names}
    breakers = {n: CircuitBreaker(n, failures, 30.0, clock) for n in names}
    engine = GenerationEngine(
        router=Router(),
        backends={n: Backend(backends[n], deadline, breakers[n]) for n in names},
        chains={SIMPLE: list(simple), COMPLEX: list(complex_chain)},
        arms=arms or {},
        checker=checker or LexicalGroundingChecker(),
        grounding_threshold=grounding_threshold,
        prices=PriceTable({"large-model": Price(input=2.0, output=8.0)}),
        clock=clock,
    )
    return Rig(engine, backends, breakers, clock)


def ask(tier: str | None = SIMPLE, key: str = "") -> GenerationRequest:
    return GenerationRequest("How many days of paid leave do we get?", SOURCES, tier, key)


async def collect(rig: Rig, request: GenerationRequest) -> list[str | Restart | RoutedAnswer]:
    return [event async for event in rig.engine.stream(request)]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- chain


async def test_first_backend_answers_with_route_cost_and_grounding() -> None:
    r = rig(complex_chain=("large",))
    routed = await r.engine.generate(ask(COMPLEX))
    assert (routed.route.tier, routed.route.backend, routed.route.model) == (
        COMPLEX,
        "large",
        "large-model",
    )
    assert routed.route.fallbacks == []
    assert (routed.input_tokens, routed.output_tokens) == (100, 10)
    assert routed.cost_usd == pytest.approx((100 * 2.0 + 10 * 8.0) / 1e6)
    assert routed.grounding.score == 1.0


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (RateLimitedError("small: rate limited"), "RESOURCE_EXHAUSTED"),
        (UnavailableError("small: down"), "UNAVAILABLE"),
        (FailedPreconditionError("small: bad key"), "FAILED_PRECONDITION"),
        (HANG, "DEADLINE_EXCEEDED"),
        (KeyError("bug"), "UNAVAILABLE"),
    ],
    ids=["429", "down", "refused", "deadline", "bug"],
)
async def test_a_failing_backend_falls_back_and_is_recorded(failure: object, code: str) -> None:
    r = rig()
    r.backends["small"].script.append(failure)
    before = sample("rag_generation_fallbacks_total", from_backend="small", cause=code.lower())
    routed = await r.engine.generate(ask())
    assert routed.route.backend == "medium"
    (attempt,) = routed.route.fallbacks
    assert (attempt.backend, attempt.model, attempt.error_code) == ("small", "small-model", code)
    assert "small" in attempt.message
    after = sample("rag_generation_fallbacks_total", from_backend="small", cause=code.lower())
    assert after == before + 1


UNUSABLE = [
    TruncatedAnswerError("small: answer cut at the 256-token output limit"),
    PromptBlockedError("small: prompt blocked (SAFETY: no message)"),
    AnswerBlockedError("small: answer stopped by the provider's content filter"),
]
UNUSABLE_IDS = ["truncated", "prompt-blocked", "answer-blocked"]


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (StreamFailedError("small: error inside the stream: boom"), "stream_error"),
        *zip(UNUSABLE, ["truncated", "prompt_blocked", "answer_blocked"], strict=True),
    ],
    ids=["stream-error", *UNUSABLE_IDS],
)
async def test_a_reply_that_is_no_answer_falls_back_counted_by_its_cause(
    failure: PlatformError, cause: str
) -> None:
    r = rig()
    r.backends["small"].script.append(failure)
    before = sample("rag_generation_fallbacks_total", from_backend="small", cause=cause)
    routed = await r.engine.generate(ask())
    assert routed.route.backend == "medium"
    (attempt,) = routed.route.fallbacks
    assert (attempt.error_code, attempt.message) == (failure.code_name, str(failure))
    after = sample("rag_generation_fallbacks_total", from_backend="small", cause=cause)
    assert after == before + 1


@pytest.mark.parametrize("failure", UNUSABLE, ids=UNUSABLE_IDS)
async def test_an_unusable_answer_does_not_count_against_the_breaker(
    failure: UnusableAnswerError,
) -> None:
    r = rig(failures=1)
    states = []
    for step in (failure, StreamFailedError("small: error inside the stream")):
        r.backends["small"].script.append(step)
        await r.engine.generate(ask())
        states.append(r.breakers["small"].state)
    assert states == [BreakerState.CLOSED, BreakerState.OPEN], "the backend is up; then failing"


@pytest.mark.parametrize("failure", UNUSABLE, ids=UNUSABLE_IDS)
async def test_escalation_does_not_ask_again_a_backend_whose_answer_was_unusable(
    failure: UnusableAnswerError,
) -> None:
    r = rig(simple=("small", "medium"), complex_chain=("large", "small"))
    r.backends["small"].script.append(failure)
    r.backends["medium"].script.append(BAD)
    r.backends["large"].script.append(UnavailableError("large: down"))
    routed = await r.engine.generate(ask(tier=None))
    assert r.backends["small"].calls == 1, "it would answer the same again"
    assert (routed.route.backend, routed.route.tier) == ("medium", SIMPLE)
    assert routed.route.escalation == (
        "grounding 0.00 < 0.80 for medium's answer; escalation failed, first answer kept: "
        f"every backend of the complex chain failed: large: down; small: not asked again: {failure}"
    )
    assert [a.backend for a in routed.route.fallbacks] == ["small"]


@pytest.mark.parametrize(
    ("last", "error"),
    [(UNUSABLE[1], PromptBlockedError), (StreamFailedError("medium: stream"), StreamFailedError)],
    ids=["prompt-blocked", "stream-error"],
)
async def test_when_every_answer_failed_the_status_is_the_backends_not_the_callers(
    last: PlatformError, error: type[PlatformError]
) -> None:
    r = rig(simple=("small", "medium"))
    r.backends["small"].script.append(TruncatedAnswerError("small: answer cut"))
    r.backends["medium"].script.append(last)
    with pytest.raises(error) as raised:
        await r.engine.generate(ask())
    assert raised.value.code_name in ("INTERNAL", "UNAVAILABLE")
    assert str(raised.value) == (
        f"every backend of the simple chain failed: small: answer cut; {last}"
    )


async def test_deadline_message_names_backend_and_deadline() -> None:
    r = rig()
    r.backends["small"].script.append(HANG)
    routed = await r.engine.generate(ask())
    assert routed.route.fallbacks[0].message == (
        "small (small-model): no answer within its 0.05 s deadline"
    )


async def test_when_all_fail_the_last_error_names_every_backend() -> None:
    r = rig(simple=("small", "medium"))
    r.backends["small"].script.append(UnavailableError("small: down"))
    r.backends["medium"].script.append(RateLimitedError("medium: rate limited"))
    with pytest.raises(RateLimitedError) as raised:
        await r.engine.generate(ask())
    assert str(raised.value) == (
        "every backend of the simple chain failed: small: down; medium: rate limited"
    )


# --------------------------------------------------------------------------- breakers


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("b", failure_threshold=2, reset_seconds=30.0, clock=clock)
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert sample("rag_circuit_breaker_open", backend="b") == 1
    clock.now += 29.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow(), "one trial after the cool-down"
    assert not breaker.allow(), "only one"
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    assert sample("rag_circuit_breaker_open", backend="b") == 0


def test_failed_trial_reopens_and_a_cancelled_one_frees_the_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("c", failure_threshold=1, reset_seconds=10.0, clock=clock)
    breaker.record_failure()
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_cancelled()
    assert breaker.allow(), "a cancelled trial proved nothing: another may try"
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 10.0


async def test_open_breaker_skips_the_backend_without_calling_it() -> None:
    r = rig(failures=2)
    r.backends["small"].script.extend([UnavailableError("small: down")] * 2)
    for _ in range(2):
        await r.engine.generate(ask())
    calls = r.backends["small"].calls
    routed = await r.engine.generate(ask())
    assert r.backends["small"].calls == calls
    assert routed.route.backend == "medium"
    assert routed.route.fallbacks[0].message == (
        "small: circuit breaker open after repeated failures; next trial in 30 s"
    )
    r.clock.now += 30.0
    assert (await r.engine.generate(ask())).route.backend == "small", "the trial succeeds"
    assert r.breakers["small"].state is BreakerState.CLOSED


async def test_cancelled_request_does_not_count_against_the_backend() -> None:
    r = rig(failures=1)
    r.backends["small"].script.append(HANG)
    task = asyncio.create_task(r.engine.generate(ask()))
    for _ in range(100):  # let it reach the backend
        if r.backends["small"].calls:
            break
        await asyncio.sleep(0)
    assert r.backends["small"].calls == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.breakers["small"].state is BreakerState.CLOSED


# --------------------------------------------------------------------------- arms


async def test_arms_are_sticky_weighted_and_reported() -> None:
    arms = {COMPLEX: [Arm("big", "large", 3), Arm("cheap", "small", 1)]}
    r = rig(arms=arms)
    assigned = {}
    for n in range(200):
        routed = await r.engine.generate(ask(COMPLEX, key=f"user-{n}"))
        assigned[n] = routed.route.arm
        again = await r.engine.generate(ask(COMPLEX, key=f"user-{n}"))
        assert again.route.arm == routed.route.arm, "sticky"
        expected_backend = "large" if routed.route.arm == "big" else "small"
        assert routed.route.backend == expected_backend
    share = sum(a == "big" for a in assigned.values()) / len(assigned)
    assert 0.6 < share < 0.9, "about 3 to 1"
    big, cheap = r.engine.ledger.arms
    assert (big.arm, big.backend, big.tier) == ("big", "large", COMPLEX)
    assert big.requests + cheap.requests == 400
    assert big.cost_usd == pytest.approx(big.requests * (100 * 2.0 + 10 * 8.0) / 1e6)
    assert cheap.cost_usd == 0.0
    assert big.mean_grounding == 1.0 and big.decline_rate == 0.0 and big.fallback_rate == 0.0


async def test_arm_falls_back_to_the_rest_of_the_chain_and_counts_it() -> None:
    r = rig(arms={COMPLEX: [Arm("only", "large", 1)]})
    r.backends["large"].script.append(UnavailableError("large: down"))
    routed = await r.engine.generate(ask(COMPLEX))
    assert (routed.route.arm, routed.route.backend) == ("only", "small")
    (arm,) = r.engine.ledger.arms
    assert arm.fallback_rate == 1.0


async def test_arm_errors_and_declines_are_counted() -> None:
    r = rig(complex_chain=("large",), arms={COMPLEX: [Arm("only", "large", 1)]})
    r.backends["large"].script.extend([UnavailableError("large: down"), "DECLINE"])
    with pytest.raises(UnavailableError):
        await r.engine.generate(ask(COMPLEX))
    declined = await r.engine.generate(ask(COMPLEX))
    assert declined.answer.declined and declined.grounding.checked == 0
    (arm,) = r.engine.ledger.arms
    assert (arm.errors, arm.requests, arm.decline_rate) == (1, 1, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"simple": ()}, "no backend chain configured for tier 'simple'"),
        ({"simple": ("small", "nope")}, "simple chain names unknown backends ['nope']"),
        ({"arms": {COMPLEX: [Arm("x", "nope", 1)]}}, "arm 'x' names unknown backend 'nope'"),
        ({"arms": {COMPLEX: [Arm("x", "large", 0)]}}, "arm 'x' has weight 0"),
        ({"arms": {"medium": [Arm("x", "large", 1)]}}, "A/B arms for unknown tier 'medium'"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rig(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- escalation


async def test_ungrounded_simple_answer_is_rewritten_by_the_complex_tier() -> None:
    r = rig()
    r.backends["small"].script.append(BAD)
    before = sample("rag_router_decisions_total", tier=COMPLEX, reason_kind="grounding_escalation")
    routed = await r.engine.generate(ask(tier=None))
    assert routed.route.tier == COMPLEX
    assert routed.route.backend == "large"
    assert routed.route.escalation == "grounding 0.00 < 0.80 for small's answer"
    assert (routed.input_tokens, routed.output_tokens) == (200, 20), "both calls count"
    assert routed.cost_usd == pytest.approx((100 * 2.0 + 10 * 8.0) / 1e6)
    after = sample("rag_router_decisions_total", tier=COMPLEX, reason_kind="grounding_escalation")
    assert after == before + 1
    usage = {(u.tier, u.model): u.answers for u in r.engine.ledger.usage_totals()}
    assert usage == {(SIMPLE, "small-model"): 1, (COMPLEX, "large-model"): 1}


async def test_forced_tier_keeps_its_ungrounded_answer_flagged() -> None:
    r = rig()
    r.backends["small"].script.append(BAD)
    routed = await r.engine.generate(ask(SIMPLE))
    assert routed.route.backend == "small" and routed.route.escalation == ""
    assert routed.grounding.unsupported == [BAD]


async def test_no_escalation_when_the_strong_tier_would_ask_the_same_backend() -> None:
    r = rig(complex_chain=("small",))
    r.backends["small"].script.append(BAD)
    routed = await r.engine.generate(ask(tier=None))
    assert routed.route.backend == "small" and routed.route.escalation == ""


async def test_failed_escalation_keeps_the_first_answer_and_says_why() -> None:
    r = rig(complex_chain=("large",))
    r.backends["small"].script.append(BAD)
    r.backends["large"].script.append(UnavailableError("large: down"))
    routed = await r.engine.generate(ask(tier=None))
    assert routed.route.backend == "small" and routed.route.tier == SIMPLE
    assert routed.route.escalation == (
        "grounding 0.00 < 0.80 for small's answer; escalation failed, first answer kept: "
        "every backend of the complex chain failed: large: down"
    )


async def test_failing_grounding_checker_falls_back_to_the_local_one() -> None:
    class Down:
        name = "remote"

        async def check(self, answer: str, sources: Sequence[SourcePassage]) -> Grounding:
            raise UnavailableError("remote checker: down")

    r = rig(checker=Down())
    routed = await r.engine.generate(ask(SIMPLE))
    assert routed.grounding.checker == "lexical-v1" and routed.grounding.score == 1.0


# --------------------------------------------------------------------------- streaming


async def test_stream_yields_deltas_then_the_routed_answer() -> None:
    events = await collect(rig(), ask())
    *deltas, final = events
    assert all(isinstance(d, str) for d in deltas)
    assert "".join(str(d) for d in deltas).strip() == GOOD
    assert isinstance(final, RoutedAnswer) and final.route.backend == "small"


async def test_stream_failure_before_any_text_falls_back_silently() -> None:
    r = rig()
    r.backends["small"].script.append(Broken(UnavailableError("small: down"), deltas=0))
    events = await collect(r, ask())
    assert not any(isinstance(e, Restart) for e in events)
    final = events[-1]
    assert isinstance(final, RoutedAnswer) and final.route.backend == "medium"


async def test_stream_failure_mid_answer_restarts_with_the_next_backend() -> None:
    r = rig()
    r.backends["small"].script.append(Broken(UnavailableError("small: reset"), deltas=2))
    events = await collect(r, ask())
    assert events[:2] == ["piece0 ", "piece1 "]
    assert events[2] == Restart("small failed mid-answer: UNAVAILABLE: small: reset")
    text = "".join(e for e in events[3:-1] if isinstance(e, str))
    assert text.strip() == GOOD
    final = events[-1]
    assert isinstance(final, RoutedAnswer) and final.route.backend == "medium"


async def test_stream_cut_at_the_token_limit_restarts_with_the_next_backend() -> None:
    r = rig()
    cut = TruncatedAnswerError("small: answer cut at the 256-token output limit")
    r.backends["small"].script.append(Broken(cut, deltas=2))
    events = await collect(r, ask())
    assert events[:3] == [
        "piece0 ",
        "piece1 ",
        Restart(f"small failed mid-answer: INTERNAL: {cut}"),
    ]
    final = events[-1]
    assert isinstance(final, RoutedAnswer) and final.route.backend == "medium"
    assert "".join(e for e in events[3:-1] if isinstance(e, str)).strip() == final.answer.text


async def test_stream_deadline_mid_answer_restarts() -> None:
    r = rig()

    async def slow_stream(
        question: str, sources: Sequence[SourcePassage]
    ) -> AsyncGenerator[str | GeneratedAnswer, None]:
        yield "partial "
        await asyncio.Event().wait()
        yield "never"

    r.backends["small"].stream = slow_stream  # type: ignore[method-assign]
    events = await collect(r, ask())
    restart = next(e for e in events if isinstance(e, Restart))
    assert "DEADLINE_EXCEEDED" in restart.reason
    final = events[-1]
    assert isinstance(final, RoutedAnswer) and final.route.backend == "medium"


async def test_stream_escalation_restarts_before_the_strong_answer() -> None:
    r = rig()
    r.backends["small"].script.append(BAD)
    events = await collect(r, ask(tier=None))
    restarts = [e for e in events if isinstance(e, Restart)]
    assert restarts == [
        Restart("grounding 0.00 < 0.80 for small's answer: rewriting with the complex tier")
    ]
    after = events[events.index(restarts[0]) + 1 : -1]
    assert "".join(str(e) for e in after).strip() == GOOD


async def test_validation_happens_before_any_backend_call() -> None:
    r = rig()
    with pytest.raises(PlatformError, match="question is empty"):
        await r.engine.generate(GenerationRequest("  ", SOURCES))
    assert r.backends["small"].calls == 0
