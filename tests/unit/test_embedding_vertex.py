"""The Vertex AI embedder through the real google-genai SDK against the fake of
Vertex's REST API: what goes on the wire, how texts are packed into requests,
backoff on throttles and outages (no wall-clock sleeps: the backoff's sleep is
recorded), permanent errors raised at once, metering."""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import google.oauth2.credentials
import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    RateLimitedError,
    UnavailableError,
)
from services.embedding.__main__ import EmbeddingSettings, build_embedder
from services.embedding.vertex import SPECIAL_TOKENS_PER_INPUT, Backoff, VertexEmbedder
from services.runtime.costs import InputPrice, PriceTable
from tests.contract.fakes.scripted import ScriptedReply
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_embedding_fake import (
    VertexEmbeddingFake,
    fake_token_count,
    fake_vector,
)

PROJECT, LOCATION = "acme-rag", "europe-west4"
PATH = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[VertexEmbeddingFake, str]]:
    fake = VertexEmbeddingFake()
    with serve(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[VertexEmbeddingFake, str]) -> Iterator[VertexEmbeddingFake]:
    served[0].reset()
    yield served[0]
    served[0].release()


class Sleeps(list[float]):
    """A backoff's sleeps, recorded instead of slept."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make(served: tuple[VertexEmbeddingFake, str], sleeps: Sleeps) -> Iterator[Any]:
    """Build embedders on the fake (the longest backoff every time); closed after the test."""
    built: list[VertexEmbedder] = []

    def build(**options: Any) -> VertexEmbedder:
        settings: dict[str, Any] = {
            "model": "text-embedding-005",
            "dimension": 768,
            "prices": PriceTable({}),
            "backoff": Backoff(sleep=sleeps, uniform=lambda low, high: high),
            **options,
        }
        embedder = VertexEmbedder(
            project=PROJECT,
            location=LOCATION,
            base_url=served[1],
            credentials=google.oauth2.credentials.Credentials(token="fake-token"),  # type: ignore[no-untyped-call]
            **settings,
        )
        built.append(embedder)
        return embedder

    yield build
    for embedder in built:
        embedder.close()


def unit(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    return array / np.linalg.norm(array)


def test_documents_go_as_retrieval_document_with_title_and_no_truncation(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    embedder = make(dimension=256)
    rows = embedder.embed(["Parking costs 12 euros."], "document", ["Parking"])
    assert fake.paths == [PATH + "text-embedding-005:predict"]
    assert fake.headers[0]["authorization"] == "Bearer fake-token"
    assert fake.requests == [
        {
            "instances": [
                {
                    "content": "Parking costs 12 euros.",
                    "task_type": "RETRIEVAL_DOCUMENT",
                    "title": "Parking",
                }
            ],
            "parameters": {"outputDimensionality": 256, "autoTruncate": False},
        }
    ]
    expected = fake_vector(
        "text-embedding-005", "Parking costs 12 euros.", "RETRIEVAL_DOCUMENT", "Parking"
    )
    np.testing.assert_allclose(rows[0], unit(expected[:256]), atol=1e-6)


def test_questions_go_as_retrieval_query_without_title(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    make().embed(["How much is parking?"], "query", ["ignored"])
    assert fake.requests[0]["instances"] == [
        {"content": "How much is parking?", "task_type": "RETRIEVAL_QUERY"}
    ]


def test_requests_hold_at_most_the_configured_texts(fake: VertexEmbeddingFake, make: Any) -> None:
    texts = [f"text number {i}" for i in range(7)]
    rows = make(max_texts_per_request=3).embed(texts, "document")
    sizes = sorted(len(r["instances"]) for r in fake.requests)
    assert sizes == [1, 3, 3]
    assert sorted(fake.documents()) == sorted(texts)
    for text, row in zip(texts, rows, strict=True):
        np.testing.assert_allclose(
            row, unit(fake_vector("text-embedding-005", text, "RETRIEVAL_DOCUMENT")), atol=1e-6
        )


def test_requests_hold_at_most_the_configured_tokens(fake: VertexEmbeddingFake, make: Any) -> None:
    texts = [f"{i} " + "y" * 698 for i in range(5)]  # 700 bytes: a bound of 703 tokens
    embedder = make(max_tokens_per_request=2100)
    assert embedder.count_tokens(texts) == [700 + SPECIAL_TOKENS_PER_INPUT] * 5
    embedder.embed(texts, "document")
    assert sorted(len(r["instances"]) for r in fake.requests) == [1, 2, 2]


def test_one_title_per_request_and_rows_in_the_callers_order(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    texts, titles = ["a one", "b two", "a three", "c four"], ["A", "B", "A", ""]
    rows = make().embed(texts, "document", titles)
    by_title = {r["instances"][0].get("title", ""): r["instances"] for r in fake.requests}
    assert [i["content"] for i in by_title["A"]] == ["a one", "a three"]
    assert len(fake.requests) == 3
    for text, title, row in zip(texts, titles, rows, strict=True):
        expected = fake_vector("text-embedding-005", text, "RETRIEVAL_DOCUMENT", title)
        np.testing.assert_allclose(row, unit(expected), atol=1e-6)


def test_gemini_embedding_sends_one_text_per_request_and_normalises_short_vectors(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    embedder = make(model="gemini-embedding-001", dimension=768)
    rows = embedder.embed(["first text", "second text", "third text"], "document")
    assert [len(r["instances"]) for r in fake.requests] == [1, 1, 1]
    assert {p.rsplit("/", 1)[1] for p in fake.paths} == {"gemini-embedding-001:predict"}
    head = fake_vector("gemini-embedding-001", "first text", "RETRIEVAL_DOCUMENT")[:768]
    assert abs(np.linalg.norm(head) - 1) > 0.1, "Google does not normalise a short vector"
    np.testing.assert_allclose(rows[0], unit(head), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("status", "name"), [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE")])
def test_throttles_and_outages_are_retried_with_growing_jittered_backoff(
    fake: VertexEmbeddingFake, make: Any, sleeps: Sleeps, status: int, name: str
) -> None:
    before = retries(name)
    fake.storm(status, 4)
    rows = make().embed(["a text"], "document")
    assert rows.shape == (1, 768)
    assert len(fake.requests) == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0], "full jitter's upper bounds: base x 2^n"
    assert retries(name) - before == 4
    assert fake.documents() == ["a text"]


def test_backoff_is_capped() -> None:
    waits: list[tuple[float, float]] = []
    backoff = Backoff(
        base_seconds=1.0,
        cap_seconds=3.0,
        sleep=lambda seconds: None,
        uniform=lambda low, high: waits.append((low, high)) or high,
    )
    for retry in range(4):
        backoff.wait(retry)
    assert waits == [(0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]


@pytest.mark.parametrize(("status", "error"), [(429, RateLimitedError), (503, UnavailableError)])
def test_a_storm_longer_than_the_attempts_fails_with_its_status(
    fake: VertexEmbeddingFake, make: Any, status: int, error: type[Exception]
) -> None:
    fake.storm(status, 10)
    embedder = make(backoff=Backoff(attempts=3, sleep=lambda seconds: None))
    with pytest.raises(error, match=f"text-embedding-005.*HTTP {status}"):
        embedder.embed(["a text"], "document")
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("status", "error"), [(400, InvalidInputError), (403, FailedPreconditionError)]
)
def test_a_permanent_error_fails_once_without_retry(
    fake: VertexEmbeddingFake, make: Any, sleeps: Sleeps, status: int, error: type[Exception]
) -> None:
    before = failures(error.code_name)  # type: ignore[attr-defined]
    fake.script(ScriptedReply(status=status))
    with pytest.raises(error, match=r"Vertex AI text-embedding-005 .*texts \[0\]"):
        make().embed(["a text"], "document")
    assert len(fake.requests) == 1
    assert sleeps == []
    assert failures(error.code_name) - before == 1  # type: ignore[attr-defined]


def test_an_over_long_document_is_refused_by_name_before_any_request(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[1\] counts 2049 tokens"):
        make().embed(["short", "z" * (2049 - SPECIAL_TOKENS_PER_INPUT)], "document")
    assert fake.requests == []


def test_the_fake_refuses_an_over_long_text_like_google(
    fake: VertexEmbeddingFake, served: tuple[VertexEmbeddingFake, str]
) -> None:
    """The fake's own check, for a client that would not count: 400 naming the instance."""
    url = served[1]
    body = {
        "instances": [{"content": "ok"}, {"content": "word " * 3000}],
        "parameters": {"autoTruncate": False},
    }
    reply = httpx.post(url + PATH + "text-embedding-005:predict", json=body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert "instances[1]" in error["message"]


def test_a_long_question_is_cut_to_the_bound_not_refused(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    question = "ﷺ " + "why " * 1000
    make().embed([question], "query")
    sent = fake.requests[0]["instances"][0]["content"]
    assert question.startswith(sent)
    assert fake_token_count(sent) <= 2048
    assert len(sent.encode()) <= 2048 - SPECIAL_TOKENS_PER_INPUT


def test_tokens_and_cost_are_metered_from_what_google_reports(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    model = "gemini-embedding-001"
    prices = PriceTable({model: InputPrice(input=0.15)}, "RAG_EMBEDDING_PRICES")
    texts = ["alpha beta gamma", "delta, epsilon!"]
    tokens_before, cost_before = metered(model)
    calls_before = (
        REGISTRY.get_sample_value("rag_embedding_backend_request_seconds_count", {"model": model})
        or 0
    )
    make(model=model, prices=prices).embed(texts, "document")
    tokens, cost = metered(model)
    expected = sum(fake_token_count(t) for t in texts)
    assert tokens - tokens_before == expected
    assert cost - cost_before == pytest.approx(expected * 0.15 / 1_000_000)
    calls = REGISTRY.get_sample_value(
        "rag_embedding_backend_request_seconds_count", {"model": model}
    )
    assert calls == calls_before + 2


def test_a_bulk_embed_through_a_429_storm_embeds_every_text_exactly_once(
    fake: VertexEmbeddingFake, make: Any
) -> None:
    texts = [f"chunk {i} about topic {i % 7}" for i in range(60)]
    fake.storm(429, 25)
    embedder = make(  # more attempts than 429s: even a request that meets them all succeeds
        max_texts_per_request=4, concurrency=4, backoff=Backoff(attempts=26, sleep=lambda s: None)
    )
    rows = embedder.embed(texts, "document")
    assert len(fake.requests) == 15 + 25, "every 429 was met and retried"
    assert Counter(fake.documents()) == Counter(texts)
    assert max(Counter(fake.documents()).values()) == 1
    for text, row in zip(texts, rows, strict=True):
        expected = fake_vector("text-embedding-005", text, "RETRIEVAL_DOCUMENT")
        np.testing.assert_allclose(row, unit(expected), atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "text-embedding-004"}, "unknown Vertex AI embedding model"),
        ({"dimension": 1024}, "at most 768 dimensions"),
        ({"max_tokens_per_request": 1000}, "cannot hold one text"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_impossible_configurations_are_refused(
    make: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(**options)


def test_settings_build_the_vertex_embedder(
    monkeypatch: pytest.MonkeyPatch, served: tuple[VertexEmbeddingFake, str]
) -> None:
    monkeypatch.setenv("RAG_EMBEDDING_BACKEND", "vertex")
    with pytest.raises(ValueError, match="RAG_GCP_PROJECT"):
        EmbeddingSettings()
    for name, value in {
        "RAG_GCP_PROJECT": PROJECT,
        "RAG_VERTEX_EMBEDDING_MODEL": "gemini-embedding-001",
        "RAG_VERTEX_EMBEDDING_DIMENSION": "1536",
        "RAG_VERTEX_EMBEDDING_BASE_URL": served[1],
        "RAG_VERTEX_EMBEDDING_ACCESS_TOKEN": "fake-token",
        "RAG_EMBEDDING_PRICES": '{"gemini-embedding-001": {"input": 0.2}}',
    }.items():
        monkeypatch.setenv(name, value)
    embedder = build_embedder(EmbeddingSettings())
    try:
        assert embedder.model_name == "gemini-embedding-001"
        assert embedder.dimension == 1536
        assert embedder.token_counting == "utf8_bytes_upper_bound"
        assert embedder.embed(["hello"], "query").shape == (1, 1536)
    finally:
        embedder.close()


def retries(status: str) -> float:
    value = REGISTRY.get_sample_value(
        "rag_embedding_backend_retries_total", {"model": "text-embedding-005", "status": status}
    )
    return value or 0.0


def failures(code: str) -> float:
    value = REGISTRY.get_sample_value(
        "rag_embedding_backend_failures_total", {"model": "text-embedding-005", "code": code}
    )
    return value or 0.0


def metered(model: str) -> tuple[float, float]:
    tokens = REGISTRY.get_sample_value("rag_embedding_tokens_total", {"model": model})
    cost = REGISTRY.get_sample_value("rag_embedding_cost_usd_total", {"model": model})
    return tokens or 0.0, cost or 0.0
