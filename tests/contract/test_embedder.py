"""The Embedder contract, run against every backend: the packaged MiniLM, and
Vertex AI through the real google-genai SDK against the fake of its REST API.

What the platform relies on whatever the model: one L2-normalised row of the
announced dimension per text, in order, the same for the same text; questions
near the passages that answer them; a token count the chunker can trust
(never under the model's own) with a way to reproduce it from GetModelInfo;
documents over the input limit refused by the service rather than truncated;
over-long questions still answered.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import google.oauth2.credentials
import numpy as np
import pytest

from ragplatform.v1 import embedding_pb2
from services.common.errors import InvalidInputError
from services.embedding.backends import Embedder, SentenceTransformerEmbedder
from services.embedding.batcher import MicroBatcher
from services.embedding.servicer import EmbeddingServicer
from services.embedding.vertex import Backoff, VertexEmbedder
from services.ingestion.chunking import ChunkingConfig, HFTokenCounter, chunk_document
from services.ingestion.parsers import ParsedDocument
from services.ingestion.pipeline import _counter as counter_for
from services.runtime.costs import PriceTable
from tests.contract.fakes.server import serve
from tests.contract.fakes.vertex_embedding_fake import VertexEmbeddingFake, fake_token_count

QUESTION = "How much is the staff parking fee at the Lyon office?"
ANSWER = "The staff parking fee at the Lyon office is 12 euros per day."
UNRELATED = "Vegetarian lunches are served in the cafeteria every Friday."
HARD_TEXTS = [
    "Plain ASCII, with punctuation: 12.5% (approx.)!",
    "Café naïve — “quotes” and ½ ﬁne ligatures",
    "Cafe\u0301 with a combining accent",
    "ﷺ expands under NFKC; so do ㎏ and ﬃ",
    "日本語のテキストと中文文本",
    "emoji 🚀🔥 and a ZWJ family 👨‍👩‍👧",
    "tabs\tand\nnewlines   and   spaces",
]


@dataclass
class Backend:
    """An embedder under test and the model's true token count (special tokens included)."""

    embedder: Embedder
    true_tokens: Callable[[str], int]


@pytest.fixture(scope="module")
def minilm() -> Backend:
    embedder = SentenceTransformerEmbedder.packaged_minilm()
    counter = HFTokenCounter.from_json(embedder.tokenizer_json())
    return Backend(embedder, lambda text: counter.count(text) + embedder.special_tokens_per_input)


@pytest.fixture(scope="module")
def vertex() -> Iterator[Backend]:
    fake = VertexEmbeddingFake()
    with serve(fake.app) as url:
        embedder = VertexEmbedder(
            model="text-embedding-005",
            dimension=256,
            project="acme-rag",
            location="europe-west4",
            prices=PriceTable({}),
            base_url=url,
            credentials=google.oauth2.credentials.Credentials(token="fake-token"),  # type: ignore[no-untyped-call]
            backoff=Backoff(sleep=lambda seconds: None),
        )
        yield Backend(embedder, fake_token_count)
        embedder.close()


@pytest.fixture(params=["minilm", "vertex"])
def backend(request: pytest.FixtureRequest) -> Backend:
    found: Backend = request.getfixturevalue(request.param)
    return found


@asynccontextmanager
async def servicer(embedder: Embedder) -> AsyncIterator[EmbeddingServicer]:
    """The embedding service's servicer on `embedder`, without a cache."""
    batcher = MicroBatcher(embedder.embed, 32, 0.0)
    try:
        yield EmbeddingServicer(embedder, batcher, 1024)
    finally:
        await batcher.close()


def test_rows_are_unit_vectors_of_the_announced_dimension(backend: Backend) -> None:
    embedder = backend.embedder
    for kind in ("document", "query"):
        rows = embedder.embed([ANSWER, UNRELATED, *HARD_TEXTS], kind)
        assert rows.dtype == np.float32
        assert rows.shape == (2 + len(HARD_TEXTS), embedder.dimension)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_order_is_kept_and_a_text_always_gets_the_same_row(backend: Backend) -> None:
    texts = [ANSWER, UNRELATED, *HARD_TEXTS]
    together = backend.embedder.embed(texts, "document")
    alone = np.vstack([backend.embedder.embed([text], "document") for text in texts])
    reversed_rows = backend.embedder.embed(texts[::-1], "document")[::-1]
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together, reversed_rows, atol=1e-5)


def test_a_question_is_nearest_the_passage_that_answers_it(backend: Backend) -> None:
    question = backend.embedder.embed([QUESTION], "query")[0]
    passages = backend.embedder.embed([ANSWER, UNRELATED], "document", ["Parking", "Cafeteria"])
    answer, unrelated = passages @ question
    assert answer > unrelated


def test_titles_are_optional_and_keep_rows_normalised(backend: Backend) -> None:
    rows = backend.embedder.embed([ANSWER, ANSWER], "document", ["Parking", ""])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_token_count_is_never_under_the_models(backend: Backend) -> None:
    texts = [ANSWER, *HARD_TEXTS, "word " * 300, "x" * 5000, "¼" * 700]
    counted = backend.embedder.count_tokens(texts)
    for text, count in zip(texts, counted, strict=True):
        assert count >= backend.true_tokens(text), text[:40]


async def test_model_info_reproduces_a_count_the_chunker_can_trust(backend: Backend) -> None:
    """The chunker's counter, built from GetModelInfo alone, cuts chunks that the
    service accepts and the model embeds whole."""
    async with servicer(backend.embedder) as service:
        info = await service.GetModelInfo(embedding_pb2.GetModelInfoRequest(), None)  # type: ignore[arg-type]
    assert info.model == backend.embedder.model_name
    assert info.dimension == backend.embedder.dimension
    if info.token_counting == embedding_pb2.TOKEN_COUNTING_TOKENIZER:
        assert info.tokenizer_json
    else:
        assert info.token_counting == embedding_pb2.TOKEN_COUNTING_UTF8_BYTES_UPPER_BOUND
        assert not info.tokenizer_json
    counter = counter_for(info)
    max_tokens = info.max_input_tokens - info.special_tokens_per_input
    text = "\n\n".join(
        f"{i}. {' '.join(HARD_TEXTS)} {'lorem ipsum ' * (i % 40)}" for i in range(60)
    )
    drafts = chunk_document(
        ParsedDocument(text, "", "text/plain", [], []),
        counter,
        ChunkingConfig(max_tokens, max_tokens, 0),
    )
    chunks = [d.text for d in drafts]
    assert len(chunks) > 1
    for chunk in chunks:
        assert backend.true_tokens(chunk) <= info.max_input_tokens
    request = embedding_pb2.EmbedDocumentsRequest(texts=chunks)
    async with servicer(backend.embedder) as service:
        response = await service.EmbedDocuments(request, None)  # type: ignore[arg-type]
    assert len(response.vectors) == len(chunks)


async def test_a_document_over_the_input_limit_is_refused_by_name(backend: Backend) -> None:
    too_long = "alpha beta " * (backend.embedder.max_input_tokens + 10)
    request = embedding_pb2.EmbedDocumentsRequest(texts=[ANSWER, too_long])
    async with servicer(backend.embedder) as service:
        with pytest.raises(InvalidInputError, match=r"texts\[1\]"):
            await service.EmbedDocuments(request, None)  # type: ignore[arg-type]


def test_an_over_long_question_is_still_embedded(backend: Backend) -> None:
    long_question = QUESTION + " and more" * (3 * backend.embedder.max_input_tokens)
    rows = backend.embedder.embed([long_question, QUESTION], "query")
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
