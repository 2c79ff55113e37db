"""Running totals behind GenerationService.GetRouterReport.

Why in-process totals next to the Prometheus metrics: an A/B comparison wants
means and rates per arm (latency, grounding, declines, fallbacks) side by side
in one answer, which ``ragctl router report`` prints without a Prometheus
server; the metrics give the same numbers over time in production. Totals
cover the process's lifetime (one replica): compare arms across replicas with
the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class ArmTotals:
    """What one A/B arm's requests added up to."""

    arm: str
    tier: str
    backend: str
    requests: int = 0
    errors: int = 0
    latency_seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    grounding_sum: float = 0.0
    answered: int = 0
    declines: int = 0
    fallbacks: int = 0

    @property
    def mean_latency_seconds(self) -> float:
        return self.latency_seconds / self.requests if self.requests else 0.0

    @property
    def mean_grounding(self) -> float:
        return self.grounding_sum / self.answered if self.answered else 0.0

    @property
    def decline_rate(self) -> float:
        return self.declines / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0


@dataclass
class UsageTotals:
    """Tokens and cost of one model in one tier."""

    tier: str
    model: str
    answers: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class ArmKey:
    """Identifies an arm: its tier and name (names may repeat across tiers)."""

    tier: str
    arm: str


@dataclass
class Ledger:
    """Accumulates per-arm and per-(tier, model) totals."""

    arms: Sequence[ArmTotals]
    clock: Callable[[], float] = time.monotonic
    usage: dict[tuple[str, str], UsageTotals] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._arms = {ArmKey(a.tier, a.arm): a for a in self.arms}

    def record_usage(
        self, tier: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        """One model call's tokens and cost, under the tier it was made for."""
        totals = self.usage.setdefault((tier, model), UsageTotals(tier, model))
        totals.answers += 1
        totals.input_tokens += input_tokens
        totals.output_tokens += output_tokens
        totals.cost_usd += cost_usd

    def record_answer(
        self,
        key: ArmKey,
        *,
        latency_seconds: float,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        grounding: float | None,
        fell_back: bool,
    ) -> None:
        """A request of arm `key` answered; `grounding` is None for a decline."""
        arm = self._arms[key]
        arm.requests += 1
        arm.latency_seconds += latency_seconds
        arm.input_tokens += input_tokens
        arm.output_tokens += output_tokens
        arm.cost_usd += cost_usd
        arm.fallbacks += fell_back
        if grounding is None:
            arm.declines += 1
        else:
            arm.answered += 1
            arm.grounding_sum += grounding

    def record_error(self, key: ArmKey) -> None:
        """A request of arm `key` failed on every backend."""
        self._arms[key].errors += 1

    def uptime_seconds(self) -> float:
        return self.clock() - self.started

    def usage_totals(self) -> list[UsageTotals]:
        """Per (tier, model), sorted."""
        return [self.usage[k] for k in sorted(self.usage)]
