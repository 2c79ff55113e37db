"""How chunks and registry records are laid out in a vector engine.

Vector names, payload fields, the fields that get payload indexes, point ids
and the BM25 term vectors are the same for every engine, so that the backends
hold the same data and rank it alike; `edge.py` and `qdrant.py` only map them
onto their engine's types. docs/qdrant.md describes the layout.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from enum import StrEnum
from typing import Any, Final, TypeVar

from qdrant_edge import Bm25, Bm25Config, SparseVector

from services.common.errors import InvalidInputError
from services.retrieval.store import DocumentRecord, StoredChunk

DENSE: Final = "dense"
"""Name of a chunk's dense (embedding) vector."""
KEYWORD: Final = "bm25"
"""Name of a chunk's sparse BM25 vector."""
PLACEHOLDER: Final = "placeholder"
"""The registry's declared-but-unused 1-dimensional vector: engines need one."""
SCROLL_BATCH: Final = 1024
"""Points per page when a store scans its registry or shards."""

ItemT = TypeVar("ItemT")


def paged(read_page: Callable[[Any], tuple[Sequence[ItemT], Any]]) -> Iterator[ItemT]:
    """Every point of an engine scroll: `read_page(offset)` returns a page and
    the offset of the next (None after the last); the first call gets None."""
    offset: Any = None
    while True:
        page, offset = read_page(offset)
        yield from page
        if offset is None:
            return


class IndexKind(StrEnum):
    """The payload index a filtered field needs."""

    KEYWORD = "keyword"
    INTEGER = "integer"


CHUNK_INDEXES: Final[Mapping[str, IndexKind]] = {
    "tenant": IndexKind.KEYWORD,
    "access_labels": IndexKind.KEYWORD,
    "tags": IndexKind.KEYWORD,
    "document_id": IndexKind.KEYWORD,
    "media_type": IndexKind.KEYWORD,
    "source_uri": IndexKind.KEYWORD,
    "document_date_unix": IndexKind.INTEGER,
}
"""Every chunk field a search or a delete filters on."""
REGISTRY_INDEXES: Final[Mapping[str, IndexKind]] = {
    "tenant": IndexKind.KEYWORD,
    "document_id": IndexKind.KEYWORD,
}
"""Every record field a registry read filters on."""

_BM25: Final = Bm25(Bm25Config())
"""English tokenizer, stemmer and stopwords; k=1.2, b=0.75. The engine applies
IDF at query time. Changing the config changes document weights, so indexed
chunks would need re-indexing."""


def scoped_id(namespace: uuid.UUID, tenant: str, *parts: str) -> str:
    """A point id unique to `tenant` and `parts`: "/" cannot occur in a tenant id
    (`validate_tenant`), so different tenants never share one. Each store keeps
    its namespaces fixed: changing one orphans every stored point."""
    return str(uuid.uuid5(namespace, "/".join((tenant, *parts))))


def keyword_text(title: str, text: str) -> str:
    """The text BM25 indexes for a chunk: its title, then its text.

    Titles name the topic in the words users search with, so every chunk of a
    document carries them; when the text already starts with the title (a
    plain-text document's first chunk) it is not counted twice.
    """
    if not title or text.startswith(title):
        return text
    return f"{title}\n{text}"


def chunk_vectors(
    dense: list[float], title: str, text: str, sparse: Callable[[SparseVector], Any]
) -> dict[str, Any]:
    """A chunk's named vectors, the BM25 one in the engine's type (`sparse`).

    A chunk whose text has no indexable term gets no BM25 vector: the engines'
    sparse index counts then equal the chunks that have one, and dense search
    still finds it.
    """
    terms = _BM25.embed_document(keyword_text(title, text))
    if not terms.indices:
        return {DENSE: dense}
    return {DENSE: dense, KEYWORD: sparse(terms)}


def query_terms(text: str) -> SparseVector:
    """The BM25 query vector of `text` (term ids with unit weights)."""
    return _BM25.embed_query(text)


_CHUNK_FIELDS: Final = tuple(f.name for f in fields(StoredChunk))
_RECORD_FIELDS: Final = tuple(f.name for f in fields(DocumentRecord))
_LIST_FIELDS: Final = ("access_labels", "tags")
"""Tuple fields of the dataclasses, stored in a payload as lists."""


def _to_payload(obj: StoredChunk | DocumentRecord, names: Sequence[str]) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies every value, 20x slower per chunk.
    payload = {name: getattr(obj, name) for name in names}
    for name in _LIST_FIELDS:
        payload[name] = list(payload[name])
    return payload


def _from_payload(payload: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    # A field added later (with a default) is absent from what older releases wrote.
    values = {name: payload[name] for name in names if name in payload}
    for name in _LIST_FIELDS:
        values[name] = tuple(values[name])
    return values


def chunk_payload(chunk: StoredChunk) -> dict[str, Any]:
    """The payload of a chunk: every field, tuples as lists (JSON)."""
    return _to_payload(chunk, _CHUNK_FIELDS)


def record_payload(record: DocumentRecord) -> dict[str, Any]:
    """The payload of a registry record: every field, tuples as lists."""
    return _to_payload(record, _RECORD_FIELDS)


def chunk_from_payload(payload: Mapping[str, Any]) -> StoredChunk:
    """The chunk stored in `payload`; keys other than its fields are ignored."""
    return StoredChunk(**_from_payload(payload, _CHUNK_FIELDS))


def record_from_payload(payload: Mapping[str, Any]) -> DocumentRecord:
    """The record stored in `payload`; keys other than its fields are ignored."""
    return DocumentRecord(**_from_payload(payload, _RECORD_FIELDS))


def refuse_foreign_chunks(
    chunk_ids: Sequence[str], owners: Mapping[str, Mapping[str, Any]], tenant: str, document_id: str
) -> None:
    """Refuse chunk ids already stored for another document (an upsert would
    silently move them): `owners` maps such stored chunk ids to their payloads.
    The error names the first in `chunk_ids` order (the request's), and the
    other document only when it is the same tenant's."""
    for chunk_id in chunk_ids:
        owner = owners.get(chunk_id)
        if owner is None:
            continue
        if owner.get("tenant") != tenant:
            raise InvalidInputError(
                f"chunk_id '{chunk_id}' already belongs to another tenant's document, "
                f"not to '{document_id}' of tenant '{tenant}'"
            )
        if owner.get("document_id") != document_id:
            raise InvalidInputError(
                f"chunk_id '{chunk_id}' already belongs to document "
                f"'{owner.get('document_id')}', not '{document_id}'"
            )
