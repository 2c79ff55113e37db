"""The model router: features, decisions, reasons, overrides, retrieval escalation,
and its accuracy on the held-out half of the router data."""

import math
from pathlib import Path

import pytest

from scripts.tune_router import load
from services.cli.evaluate import evaluate_router
from services.generation.backends import SourcePassage
from services.generation.router import (
    COMPLEX,
    INTERCEPT,
    SIMPLE,
    Router,
    question_features,
    question_words,
)

ROUTER_DATA = Path(__file__).resolve().parents[3] / "shared" / "eval" / "router" / "questions.jsonl"

COMPARISON = "Were Scott Derrickson and Ed Wood of the same nationality?"
BRIDGE = (
    "The football manager who recruited David Beckham managed Manchester United during what "
    "timeframe?"
)
SINGLE_FACT = "who wrote the music phantom of the opera"


def values(question: str) -> dict[str, float]:
    return {f.name: f.value for f in question_features(question)}


def passage(number: int, score: float, document: str) -> SourcePassage:
    return SourcePassage(number, "Some text.", f"Title {document}", score, document)


def test_normalisation_ignores_case_punctuation_and_spacing() -> None:
    assert question_words("Were  Scott Derrickson's films?") == [
        "were",
        "scott",
        "derrickson",
        "s",
        "films",
    ]


def test_typography_does_not_change_the_features_or_the_score() -> None:
    typed = "Were Scott Derrickson and Ed Wood of the same nationality?"
    plain = "were scott derrickson and ed wood of the same nationality"
    assert values(typed) == values(plain)
    assert Router().decide(typed).score == Router().decide(plain).score


def test_comparison_question_features() -> None:
    found = values(COMPARISON)
    assert found["yes_no"] == 1.0
    assert found["comparison_cue"] == 1.0
    assert found["coordination"] == 1.0
    assert found["statement"] == 0.0


def test_bridge_question_features() -> None:
    found = values(BRIDGE)
    assert found["relative_clauses"] == 1.0  # "who recruited"
    assert found["embedded_question_word"] == 1.0  # "during what timeframe"
    assert found["yes_no"] == 0.0


def test_fill_in_statement_is_a_statement() -> None:
    assert values("the most important battles in the revolutionary war")["statement"] == 1.0


def test_comparison_routes_complex_with_a_reason_naming_its_cues() -> None:
    decision = Router().decide(COMPARISON)
    assert decision.tier == COMPLEX and not decision.overridden
    assert decision.reason.startswith("complex: ")
    assert "comparison cue 'same'" in decision.reason
    assert decision.reason.endswith(f"score {decision.score:.2f} >= 0.50")
    assert decision.reason_kind == "score"


def test_bridge_routes_complex() -> None:
    assert Router().decide(BRIDGE).tier == COMPLEX


def test_short_single_fact_question_routes_simple() -> None:
    decision = Router().decide(SINGLE_FACT)
    assert decision.tier == SIMPLE
    assert decision.reason.startswith("simple: ")
    assert decision.reason.endswith(f"score {decision.score:.2f} < 0.50")


def test_threshold_moves_the_decision() -> None:
    score = Router().decide(SINGLE_FACT).score
    assert Router(threshold=score - 0.01).decide(SINGLE_FACT).tier == COMPLEX
    assert Router(threshold=score + 0.01).decide(SINGLE_FACT).tier == SIMPLE


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_threshold_outside_the_open_unit_interval_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        Router(threshold=threshold)


def test_contributions_add_up_to_the_score() -> None:
    decision = Router().decide(BRIDGE, [passage(1, 0.3, "a")])
    logit = INTERCEPT + sum(f.contribution for f in decision.features)
    assert decision.score == pytest.approx(1 / (1 + math.exp(-logit)))


def test_override_forces_the_tier_and_keeps_the_router_view() -> None:
    decision = Router().decide(COMPARISON, override=SIMPLE)
    assert (decision.tier, decision.overridden, decision.reason_kind) == (SIMPLE, True, "override")
    assert decision.reason.startswith("simple: requested (router said complex:")


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        Router().decide(SINGLE_FACT, override="medium")


def test_low_retrieval_confidence_escalates_a_simple_question() -> None:
    confident = Router().decide(SINGLE_FACT, [passage(1, 0.71, "a"), passage(2, 0.40, "b")])
    unsure = Router().decide(SINGLE_FACT, [passage(1, 0.31, "a"), passage(2, 0.30, "a")])
    assert confident.tier == SIMPLE
    assert unsure.tier == COMPLEX
    assert unsure.reason_kind == "low_retrieval"
    assert "low retrieval confidence (top score 0.31 < 0.45)" in unsure.reason


def test_retrieval_features_are_recorded() -> None:
    decision = Router().decide(
        SINGLE_FACT, [passage(1, 0.70, "a"), passage(2, 0.68, "b"), passage(3, 0.5, "a")]
    )
    found = {f.name: f.value for f in decision.features}
    assert found["top_score"] == pytest.approx(0.70)
    assert found["score_spread"] == pytest.approx(0.20)
    assert found["distinct_documents"] == 2.0
    assert found["evidence_spread"] == 1.0  # document b scores within 0.05 of the top


def test_no_sources_means_no_retrieval_features() -> None:
    names = {f.name for f in Router().decide(SINGLE_FACT).features}
    assert "top_score" not in names and "low_retrieval_confidence" not in names


def test_held_out_accuracy_meets_the_target() -> None:
    if not ROUTER_DATA.exists():
        pytest.skip(f"{ROUTER_DATA} not found: put the shared evaluation data in ../shared (as CI)")
    held_out = [(e.question, e.label) for e in load(ROUTER_DATA) if e.half == "held-out"]
    report = evaluate_router(held_out, Router())
    assert report["questions"] > 600
    assert report["accuracy"] >= 0.85, report
