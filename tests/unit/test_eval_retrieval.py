"""Ranking metrics on hand-computed cases, and the BEIR helpers of `eval retrieval`."""

import math
from pathlib import Path

import pytest

from services.cli.eval_retrieval import (
    HALVES,
    corpus_id_of,
    dedupe,
    load_beir,
    query_half,
    sweep_fusion,
    write_corpus,
)
from services.retrieval.metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k

QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 2, "d4": 1}, "q3": {"d9": 0}}
RUN = {"q1": ["d3", "d2", "d1"], "q2": ["d5", "d4", "d2"], "q3": ["d9"]}


def test_ndcg_hand_computed() -> None:
    # q1: gains at ranks 1 and 3: 1/log2(2) + 1/log2(4) = 1.5; ideal 1 + 1/log2(3) = 1.6309.
    assert ndcg_at_k(RUN["q1"], QRELS["q1"], 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # q2 (graded): 1/log2(3) + 2/log2(4) = 1.6309; ideal 2 + 1/log2(3) = 2.6309.
    expected = (1 / math.log2(3) + 1) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(RUN["q2"], QRELS["q2"], 10) == pytest.approx(expected)
    assert ndcg_at_k(RUN["q1"], QRELS["q1"], 1) == 1.0  # cut at 1: d3 relevant, ideal 1
    assert ndcg_at_k(["x"], {}, 10) == 0.0


def test_recall_and_mrr_hand_computed() -> None:
    assert recall_at_k(RUN["q1"], QRELS["q1"], 2) == 0.5
    assert recall_at_k(RUN["q1"], QRELS["q1"], 3) == 1.0
    assert mrr_at_k(RUN["q2"], QRELS["q2"], 10) == 0.5
    assert mrr_at_k(RUN["q2"], QRELS["q2"], 1) == 0.0
    assert mrr_at_k(["d9"], QRELS["q3"], 10) == 0.0  # relevance 0 is not relevant


def test_evaluate_run_averages_judged_queries_only() -> None:
    report = evaluate_run(RUN, QRELS)  # q3 has no relevant document: left out
    ndcg_q1 = 1.5 / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(3) + 1) / (2 + 1 / math.log2(3))
    assert report["ndcg_at_10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert report["recall_at_10"] == 1.0
    assert report["mrr_at_10"] == pytest.approx(0.75)
    assert evaluate_run({}, QRELS)["recall_at_100"] == 0.0  # missing queries count as misses
    with pytest.raises(ValueError, match="no query has a relevant document"):
        evaluate_run(RUN, {"q3": {"d9": 0}})


def write_beir(directory: Path) -> None:
    (directory / "qrels").mkdir(parents=True)
    (directory / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Cats", "text": "Cats purr."}\n'
        '{"_id": "d2", "text": "Dogs bark."}\n\n',
        encoding="utf-8",
    )
    (directory / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "purring"}\n{"_id": "q2", "text": "unjudged"}\n', encoding="utf-8"
    )
    (directory / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8"
    )


def test_load_and_write_beir(tmp_path: Path) -> None:
    write_beir(tmp_path / "set")
    data = load_beir(tmp_path / "set", "dev")
    assert data.corpus == {"d1": ("Cats", "Cats purr."), "d2": ("", "Dogs bark.")}
    assert data.queries == {"q1": "purring"}  # unjudged queries are dropped
    assert data.qrels == {"q1": {"d1": 1}}
    cache = tmp_path / "cache"
    assert write_corpus(data.corpus, cache) == 2
    assert (cache / "d1.txt").read_text(encoding="utf-8") == "Cats\n\nCats purr."
    assert (cache / "d2.txt").read_text(encoding="utf-8") == "Dogs bark."
    assert write_corpus(data.corpus, cache) == 0  # unchanged files are not rewritten
    with pytest.raises(FileNotFoundError):
        load_beir(tmp_path / "set", "test")
    with pytest.raises(ValueError, match="cannot be a file name"):
        write_corpus({"a/b": ("", "x")}, cache)


def test_hits_map_to_corpus_ids_by_file_stem(tmp_path: Path) -> None:
    cache = tmp_path.resolve()
    assert corpus_id_of((cache / "4983.txt").as_uri(), cache) == "4983"
    assert corpus_id_of((cache / "sub" / "1.txt").as_uri(), cache) is None
    assert corpus_id_of("https://example.com/4983.txt", cache) is None
    assert dedupe(["a", None, "b", "a", "c"]) == ["a", "b", "c"]


def test_halves_are_stable_and_both_used() -> None:
    halves = {query_half(str(i)) for i in range(50)}
    assert halves == set(HALVES)
    assert query_half("17") == query_half("17")


def test_fusion_sweep_picks_on_the_tune_half() -> None:
    queries = [str(i) for i in range(40)]
    # dense finds the relevant chunk at rank 3, keyword at rank 1: fusion should do well.
    dense = {q: [f"x{q}", f"y{q}", f"rel{q}"] for q in queries}
    keyword = {q: [f"rel{q}", f"z{q}"] for q in queries}
    to_corpus = {c: c for run in (dense, keyword) for chunks in run.values() for c in chunks}
    qrels = {q: {f"rel{q}": 1} for q in queries}
    sweep = sweep_fusion(dense, keyword, to_corpus, qrels)
    assert sweep["best_on_tune"]["rrf_k"] in (1, 2, 5, 10, 20, 40, 60, 100)
    assert sweep["tune"]["mrr_at_10"] == 1.0
    assert sweep["held_out"]["mrr_at_10"] == 1.0
    assert len(sweep["grid_ndcg_at_10"]) == 8 * 3
