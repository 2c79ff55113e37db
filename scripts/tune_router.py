"""Fit and measure the model router's question weights.

Why this script: the router's weights (``QUESTION_WEIGHTS`` and ``INTERCEPT`` in
``services/generation/router.py``) are committed constants, so they must come
from somewhere reproducible. This fits them on half of
``shared/eval/router/questions.jsonl`` and reports accuracy on both halves.

What it does: splits the questions 50/50 by SHA-256 of the question text
(deterministic, independent of file order), computes the router's features on
the *normalised* questions (the router normalises case and punctuation
itself), fits an L2-regularised logistic regression on the tune half with the
features centred on their tune-half means, and prints:

* accuracy, confusion matrix and share sent to the strong model on each half
  for the router as committed (the default), or
* with ``--fit``, the fitted weights as Python to paste into the router module,
  then the same report for the fitted weights.

Usage:
    python scripts/tune_router.py            # measure the committed weights
    python scripts/tune_router.py --fit      # refit on the tune half and measure
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.generation import router
from services.generation.router import COMPLEX, SIMPLE, Router, question_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "router" / "questions.jsonl"
L2 = 0.01
"""Penalty on standardised weights: mild, the features are few and the data not tiny."""
ROUNDING = 1
"""Committed weights are rounded to this many decimals: readable, and the fit is a
plateau (rounding changes held-out accuracy by less than one question)."""


@dataclass(frozen=True)
class Example:
    question: str
    label: str
    half: str


def load(path: Path) -> list[Example]:
    """Labelled questions, each in half "tune" or "held-out" by SHA-256 of its text."""
    examples = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                digest = hashlib.sha256(row["question"].encode()).digest()
                half = "tune" if digest[0] % 2 == 0 else "held-out"
                examples.append(Example(row["question"], row["label"], half))
    return examples


def fit(examples: list[Example]) -> tuple[dict[str, tuple[float, float]], float]:
    """Weights (per raw feature unit) with centres, and the intercept."""
    names = [f.name for f in question_features(examples[0].question)]
    x = np.array([[f.value for f in question_features(e.question)] for e in examples])
    y = np.array([e.label == COMPLEX for e in examples], dtype=float)
    centre = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-9
    z = (x - centre) / scale
    w = np.zeros(len(names))
    b = 0.0
    for _ in range(20000):  # plain gradient descent: convex, small, no extra dependency
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - y) / len(y) + L2 * w)
        b -= 0.5 * float((p - y).mean())
    raw = w / scale
    weights = {
        n: (round(float(raw[i]), ROUNDING), round(float(centre[i]), 2)) for i, n in enumerate(names)
    }
    return weights, round(b, ROUNDING)


def report(examples: list[Example], decide: Router) -> dict[str, dict[str, object]]:
    """Accuracy, confusion matrix and share routed to the strong tier, per half."""
    out: dict[str, dict[str, object]] = {}
    for half in ("tune", "held-out"):
        rows = [e for e in examples if e.half == half]
        confusion = {t: {p: 0 for p in (SIMPLE, COMPLEX)} for t in (SIMPLE, COMPLEX)}
        for e in rows:
            confusion[e.label][decide.decide(e.question).tier] += 1
        correct = confusion[SIMPLE][SIMPLE] + confusion[COMPLEX][COMPLEX]
        strong = confusion[SIMPLE][COMPLEX] + confusion[COMPLEX][COMPLEX]
        out[half] = {
            "questions": len(rows),
            "accuracy": round(correct / len(rows), 3),
            "confusion (label -> routed)": confusion,
            "share_strong": round(strong / len(rows), 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", action="store_true", help="refit the weights on the tune half")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    examples = load(args.data)
    if args.fit:
        weights, intercept = fit([e for e in examples if e.half == "tune"])
        print("QUESTION_WEIGHTS: dict[str, tuple[float, float]] = {")
        for name, (weight, centre) in weights.items():
            print(f'    "{name}": ({weight}, {centre}),')
        print("}")
        print(f"INTERCEPT = {intercept}")
        router.QUESTION_WEIGHTS.update(weights)
        router.INTERCEPT = intercept
    print(json.dumps(report(examples, Router()), indent=2))


if __name__ == "__main__":
    main()
