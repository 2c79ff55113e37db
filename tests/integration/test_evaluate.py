"""`ragctl eval router|answers|arms` on tiny data sets made here, answers on the real platform."""

import json
from pathlib import Path
from typing import Any

import pytest

from ragplatform.v1 import retrieval_pb2
from services.cli.evaluate import EVAL_TENANT
from services.cli.ragctl import main
from services.cli.supervisor import Platform
from tests.integration.conftest import TEST_ENV, Stubs

pytestmark = pytest.mark.integration

PASSAGES = [
    {
        "_id": "bakery",
        "title": "Harbor Street Bakery",
        "text": "The Harbor Street Bakery bakes 340 loaves of rye bread every morning. "
        "Its ovens are fired with beech wood delivered on Mondays.",
    },
    {
        "_id": "lighthouse",
        "title": "Gull Point Lighthouse",
        "text": "The Gull Point Lighthouse was automated in 1987. Its lamp is visible "
        "from 22 nautical miles away in clear weather.",
    },
    {
        "_id": "chess",
        "title": "Riverside Chess Club",
        "text": "The Riverside Chess Club meets on Thursday evenings in the old library. "
        "Members pay a yearly fee of 40 euros.",
    },
]
QUESTIONS = [
    {
        "question": "How many loaves of rye bread does the Harbor Street Bakery bake each morning?",
        "answerable": True,
        "gold_passage_id": "bakery",
    },
    {
        "question": "When was the Gull Point Lighthouse automated?",
        "answerable": True,
        "gold_passage_id": "lighthouse",
    },
    {
        "question": "What is the boiling point of liquid nitrogen in kelvin?",
        "answerable": False,
        "gold_passage_id": "chess",
    },
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def platform_env(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """ragctl reads addresses from RAG_* variables: point them at the test platform."""
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAG_TENANT", raising=False)


def test_eval_router_reports_accuracy_confusion_and_strong_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = write_jsonl(
        tmp_path / "router.jsonl",
        [
            {"question": "who wrote the music phantom of the opera", "label": "simple"},
            {"question": "WHO WROTE THE MUSIC PHANTOM OF THE OPERA?!", "label": "simple"},
            {
                "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
                "label": "complex",
            },
            {"question": "when was the first wonder woman comic released", "label": "complex"},
        ],
    )
    report = run_json(capsys, "eval", "router", str(questions), "--json")
    assert report["questions"] == 4
    assert report["confusion"] == {
        "simple": {"simple": 2, "complex": 0},
        "complex": {"simple": 1, "complex": 1},
    }
    assert (report["accuracy"], report["share_strong"]) == (0.75, 0.25)


def test_eval_router_names_a_bad_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "label": "hard"}])
    assert main(["eval", "router", str(questions)]) == 1
    assert "row 1 has label 'hard'" in capsys.readouterr().err


def test_eval_answers_and_arms_on_the_platform(
    platform_env: None, stubs: Stubs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "tinyqa"
    dataset.mkdir()
    write_jsonl(dataset / "passages.jsonl", PASSAGES)
    write_jsonl(dataset / "qa.jsonl", QUESTIONS)
    report = run_json(capsys, "eval", "answers", str(dataset), "--json", "--cleanup")
    assert report["tenant"] == EVAL_TENANT
    assert report["ingested"] == {"STATUS_CREATED": 3}
    assert (report["questions"], report["answerable"], report["unanswerable"]) == (3, 2, 1)
    assert report["retrieval_recall_at_3"] == 1.0
    assert report["false_declines"] == 0.0
    assert report["correct_declines"] == 1.0
    assert report["citation_precision"] == 1.0 and report["citations"] >= 2
    assert report["mean_grounding"] == 1.0
    assert report["backends"] == {"extractive": 3}
    assert (report["input_tokens"], report["cost_usd"]) == (0, 0.0)
    assert 0 < report["latency_p50_seconds"] <= report["latency_p95_seconds"]
    listed = stubs.retrieval.ListDocuments(
        retrieval_pb2.ListDocumentsRequest(tenant=EVAL_TENANT), timeout=10
    )
    assert not [d for d in listed.documents if d.document_id.startswith("eval-tinyqa:")]

    arms = run_json(capsys, "eval", "arms", "--json")
    assert arms["arms"] == [], "the embedded default has no A/B arms"
    models = {(u["tier"], u["model"]) for u in arms["usage"]}
    assert models <= {("simple", "lexical-v1"), ("complex", "lexical-v1")} and models
