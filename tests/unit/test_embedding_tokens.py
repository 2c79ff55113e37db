"""The token bound for embedders without a public tokenizer, and the chunker on it."""

import unicodedata

import pytest

from ragplatform.v1 import embedding_pb2
from services.common.errors import PlatformError
from services.common.tokens import utf8_token_bound, utf8_token_offsets
from services.ingestion.chunking import (
    ChunkingConfig,
    HFTokenCounter,
    Utf8BoundCounter,
    chunk_document,
)
from services.ingestion.parsers import ParsedDocument
from services.ingestion.pipeline import _counter


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        ("plain ascii", 11),
        ("é", 2),  # precomposed: NFKC keeps it
        ("e\u0301", 3),  # decomposed: NFKC shortens it to 2 bytes, the raw text counts
        ("ﷺ", len(unicodedata.normalize("NFKC", "ﷺ").encode())),  # NFKC lengthens it to 33
        ("🚀", 4),
    ],
)
def test_the_bound_is_the_larger_of_the_raw_and_nfkc_byte_lengths(text: str, bound: int) -> None:
    assert utf8_token_bound(text) == bound


def test_offsets_give_each_character_its_own_bound() -> None:
    text = "aé🚀ﷺ"
    offsets = utf8_token_offsets(text)
    assert offsets[:3] == [(0, 1), (1, 2), (1, 2)]
    assert len(offsets) == sum(utf8_token_bound(c) for c in text)
    assert utf8_token_offsets("ab") == [(0, 1), (1, 2)]


def test_chunks_counted_by_the_bound_never_exceed_it() -> None:
    """Composition across characters makes a join count more than its characters
    (é then a dot below becomes ẹ and an acute): the chunker's final re-count catches it."""
    sentence = "Caf\u00e9\u0323 ﷺ naïve 日本語 🚀 text. "
    text = "\n\n".join(sentence * (1 + i % 9) for i in range(80))
    doc = ParsedDocument(text, "", "text/plain", [], [])
    config = ChunkingConfig(max_tokens=200, target_tokens=150, overlap_tokens=20)
    drafts = chunk_document(doc, Utf8BoundCounter(), config)
    assert len(drafts) > 10
    for draft in drafts:
        assert draft.token_count == utf8_token_bound(draft.text) <= 200


def test_ingestion_counts_as_the_embedder_announces() -> None:
    bound = embedding_pb2.GetModelInfoResponse(
        model="text-embedding-005",
        token_counting=embedding_pb2.TOKEN_COUNTING_UTF8_BYTES_UPPER_BOUND,
    )
    assert isinstance(_counter(bound), Utf8BoundCounter)
    with pytest.raises(PlatformError, match="no tokenizer and no token bound"):
        _counter(embedding_pb2.GetModelInfoResponse(model="secret"))
    word_level = (
        '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, '
        '"unk_token": "[UNK]"}, "pre_tokenizer": {"type": "Whitespace"}}'
    )
    exact = embedding_pb2.GetModelInfoResponse(model="m", tokenizer_json=word_level.encode())
    assert isinstance(_counter(exact), HFTokenCounter)
