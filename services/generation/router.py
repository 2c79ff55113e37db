"""The model router: decides per question whether the cheap or the strong model answers.

Why a router: most questions a RAG platform gets ask for one fact that a small
model (Llama 3.1 8B on vLLM) states as well as a large one, at a fraction of
the cost and latency; multi-hop and comparison questions ("Were Scott Derrickson
and Ed Wood of the same nationality?") need the strong model (Gemini Pro). The
router sends each question to a *tier* (``simple`` or ``complex``); the
generation service maps tiers to backend chains.

It is deliberately transparent: a handful of named features, each with a weight,
a logistic score, and a threshold from configuration. Every decision carries its
features, their contributions and a one-line reason, e.g.
``complex: comparison cue 'same', yes/no question; score 0.83 >= 0.50``, so a
wrong route can be understood and argued with.

Question features are computed on the *normalised* question (lowercased,
punctuation removed, whitespace collapsed): the training questions come from two
sources that differ in typography (NQ questions are lowercase without a question
mark, HotpotQA ones are capitalised), and a router fitted on raw text learns
the typography instead of the complexity. For the same reason there is no
capitalised-entity count. Each feature contributes ``weight * (value - centre)``
log-odds, where the centre is the feature's mean on the tuning half, so a
contribution says how much *this* question differs from an average one.

Retrieval features come from the sources the query service supplies. The router
data has no retrieval, so their weights are set by hand, not fitted:

* ``low_retrieval_confidence`` (1 when the best source scores below
  ``min_top_score``, weight +4): when retrieval found nothing close, a small
  model is the likeliest to guess, so the strong model gets the question (or
  declines it more reliably);
* ``evidence_spread`` (other documents scoring within 0.05 of the best one,
  weight +0.6 each): the answer may have to be assembled from several
  documents;
* ``top_score``, ``score_spread`` (best minus worst score) and
  ``distinct_documents`` are recorded with weight 0, for the record.

The question weights are fitted by ``scripts/tune_router.py`` on half of
``shared/eval/router/questions.jsonl`` (NQ-open single-fact questions labelled
simple, HotpotQA bridge and comparison questions complex); its accuracy on the
other half, the method and the known weak spots are in docs/quality.md.
English only.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from services.generation.backends import SourcePassage

SIMPLE = "simple"
COMPLEX = "complex"
TIERS = (SIMPLE, COMPLEX)

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_TOP_SCORE = 0.45
"""Cosine of all-MiniLM-L6-v2 below which retrieval counts as not confident
(the extractive answerer declines below 0.52; docs/quality.md)."""

_QUESTION_WORDS = frozenset(
    {"who", "whom", "whose", "what", "when", "where", "which", "why", "how"}
)
_AUXILIARIES = frozenset(
    {"is", "are", "was", "were", "do", "does", "did", "can", "could", "has", "have", "had",
     "will", "would", "should"}
)  # fmt: skip
_RELATIVES = frozenset({"who", "whom", "whose", "that", "which", "where", "when"})
_COMPARISON_CUES = frozenset(
    {"both", "same", "either", "than", "more", "less", "most", "least", "first", "earlier",
     "later", "older", "younger", "oldest", "youngest", "longer", "shorter", "larger", "smaller",
     "bigger", "higher", "lower", "greater", "fewer", "taller", "newer", "different", "difference",
     "compared", "between"}
)  # fmt: skip
_COORDINATORS = frozenset({"and", "or"})

# Fitted by scripts/tune_router.py on the tune half (see the module docstring).
# name: (weight in log-odds per unit, centre = mean on the tune half)
QUESTION_WEIGHTS: dict[str, tuple[float, float]] = {
    "words": (4.6, 2.55),
    "yes_no": (1.6, 0.05),
    "which_first": (1.4, 0.1),
    "embedded_question_word": (1.6, 0.26),
    "statement": (-1.1, 0.04),
    "relative_clauses": (1.2, 0.35),
    "comparison_cue": (0.8, 0.21),
    "coordination": (1.2, 0.31),
    "number": (0.3, 0.2),
    "by_phrase": (1.2, 0.13),
}
INTERCEPT = 1.9
"""Log-odds of `complex` for a question whose features all sit at their centres."""

LOW_CONFIDENCE_WEIGHT = 4.0
EVIDENCE_SPREAD_WEIGHT = 0.6
EVIDENCE_MARGIN = 0.05
"""Other documents scoring within this of the best source count as competing evidence."""


def question_words(question: str) -> list[str]:
    """Lowercased words of `question` without punctuation (see the module docstring)."""
    text = unicodedata.normalize("NFKC", question).lower()
    return re.sub(r"[^\w\s]|_", " ", text).split()


@dataclass(frozen=True)
class Feature:
    """One named feature of a decision and what it contributed."""

    name: str
    value: float
    weight: float
    centre: float
    detail: str
    """How the feature reads in a reason, e.g. "comparison cue 'same'"."""

    @property
    def contribution(self) -> float:
        """Log-odds added to the score; positive pushes towards `complex`."""
        return self.weight * (self.value - self.centre)


@dataclass(frozen=True)
class RouteDecision:
    """The router's decision for one question."""

    tier: str
    score: float
    """Logistic score in [0, 1]: how complex the question looks."""
    threshold: float
    reason: str
    features: list[Feature]
    overridden: bool
    """True when the request forced the tier."""

    @property
    def reason_kind(self) -> str:
        """Low-cardinality label of the reason, for metrics."""
        if self.overridden:
            return "override"
        low = next((f for f in self.features if f.name == "low_retrieval_confidence"), None)
        if self.tier == COMPLEX and low is not None and low.value:
            return "low_retrieval"
        return "score"


def _question_feature(name: str, value: float, detail: str) -> Feature:
    weight, centre = QUESTION_WEIGHTS[name]
    return Feature(name, value, weight, centre, detail)


def _flag(name: str, on: bool, when_on: str, when_off: str) -> Feature:
    return _question_feature(name, float(on), when_on if on else when_off)


def question_features(question: str) -> list[Feature]:
    """The question's features (see QUESTION_WEIGHTS), computed on its normalised words."""
    words = question_words(question) or [""]
    first = words[0]
    asks = [w for w in words if w in _QUESTION_WORDS]
    relatives = [w for w in words[2:] if w in _RELATIVES]
    cues = [w for w in words if w in _COMPARISON_CUES]
    coordinators = sum(w in _COORDINATORS for w in words)
    yes_no = first in _AUXILIARIES
    embedded = first not in _QUESTION_WORDS and bool(asks)
    return [
        _question_feature("words", math.log(len(words)), f"{len(words)} words"),
        _flag("yes_no", yes_no, "yes/no question", "not a yes/no question"),
        _flag("which_first", first == "which", "'which' question", "not a 'which' question"),
        _flag(
            "embedded_question_word",
            embedded,
            f"question word inside ('{asks[-1]}')" if embedded else "",
            "no embedded question word",
        ),
        _flag("statement", not asks and not yes_no, "fill-in statement", "a question"),
        _question_feature(
            "relative_clauses",
            float(len(relatives)),
            f"{len(relatives)} relative clause(s) ('{relatives[0]}')"
            if relatives
            else "no relative clause",
        ),
        _flag(
            "comparison_cue",
            bool(cues),
            f"comparison cue '{cues[0]}'" if cues else "",
            "no comparison cue",
        ),
        _question_feature("coordination", float(coordinators), f"{coordinators} 'and'/'or'"),
        _flag("number", any(w.isdigit() for w in words), "a number or year", "no number"),
        _flag("by_phrase", "by" in words, "'by' phrase", "no 'by' phrase"),
    ]


def _document_of(source: SourcePassage) -> str:
    return source.document_id or source.title


def retrieval_features(sources: Sequence[SourcePassage], min_top_score: float) -> list[Feature]:
    """Features of what retrieval found (hand-set weights; see the module docstring)."""
    if not sources:
        return []
    best = max(sources, key=lambda s: s.score)
    top = best.score
    competing = {_document_of(s) for s in sources if top - s.score <= EVIDENCE_MARGIN}
    competing.discard(_document_of(best))
    low = top < min_top_score
    return [
        Feature(
            "low_retrieval_confidence",
            float(low),
            LOW_CONFIDENCE_WEIGHT,
            0.0,
            f"low retrieval confidence (top score {top:.2f} < {min_top_score:.2f})",
        ),
        Feature(
            "evidence_spread",
            float(len(competing)),
            EVIDENCE_SPREAD_WEIGHT,
            0.0,
            f"{len(competing)} other document(s) within {EVIDENCE_MARGIN} of the top score",
        ),
        Feature("top_score", top, 0.0, 0.0, f"top score {top:.2f}"),
        Feature(
            "score_spread",
            top - min(s.score for s in sources),
            0.0,
            0.0,
            "best minus worst score",
        ),
        Feature(
            "distinct_documents",
            float(len({_document_of(s) for s in sources})),
            0.0,
            0.0,
            "distinct documents",
        ),
    ]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class Router:
    """Scores questions and picks a tier; pure Python, no I/O."""

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, min_top_score: float = DEFAULT_MIN_TOP_SCORE
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"router threshold {threshold} must lie strictly between 0 and 1")
        self.threshold = threshold
        self.min_top_score = min_top_score

    def decide(
        self,
        question: str,
        sources: Sequence[SourcePassage] = (),
        override: str | None = None,
    ) -> RouteDecision:
        """The tier for `question` given what retrieval found; `override` forces a tier
        (the router's own view is kept in the reason)."""
        if override is not None and override not in TIERS:
            raise ValueError(f"unknown tier {override!r}; known: {', '.join(TIERS)}")
        features = question_features(question) + retrieval_features(sources, self.min_top_score)
        score = _sigmoid(INTERCEPT + sum(f.contribution for f in features))
        routed = COMPLEX if score >= self.threshold else SIMPLE
        comparison = ">=" if routed == COMPLEX else "<"
        because = f"{_strongest(features, towards_complex=routed == COMPLEX)}; "
        because += f"score {score:.2f} {comparison} {self.threshold:.2f}"
        if override is not None:
            reason = f"{override}: requested (router said {routed}: {because})"
            return RouteDecision(override, score, self.threshold, reason, features, True)
        return RouteDecision(routed, score, self.threshold, f"{routed}: {because}", features, False)


def _strongest(features: Sequence[Feature], *, towards_complex: bool, limit: int = 3) -> str:
    """The details of the (up to `limit`) features that pushed hardest towards the decision."""
    sign = 1.0 if towards_complex else -1.0
    pushing = sorted(
        (f for f in features if sign * f.contribution > 0.05), key=lambda f: -sign * f.contribution
    )
    if not pushing:
        return "no strong cue"
    return ", ".join(f.detail for f in pushing[:limit])
