"""The vocabulary of a search shared by the services that build and run one.

The query service validates a request's filter before it calls anything, and
the retrieval service turns the same protobuf filter into the same domain
filter, so both live here (every image holds services/common, and no service
imports another's package).
"""

from __future__ import annotations

from dataclasses import dataclass

from ragplatform.v1 import common_pb2
from services.common.errors import InvalidInputError
from services.common.tenancy import validate_labels

MAX_TOP_K = 100
"""Upper bound on `search(top_k=...)`: a RAG prompt never needs more, and a bound
keeps one request from asking the engine for an unbounded result set."""

MAX_FILTER_VALUES = 1024
"""Upper bound on the values of one filter field: a filter is a scope, not a
list of every document, and each value becomes a term of the engine's query,
so an unbounded list would grow the retrieval process's memory with it."""


@dataclass(frozen=True)
class SearchFilter:
    """Restricts a search: fields combine with AND, values within a field with OR.

    An empty tuple means "no restriction on this field".
    """

    document_ids: tuple[str, ...] = ()
    media_types: tuple[str, ...] = ()
    source_uris: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    date_from_unix: int | None = None
    """Documents dated at or after this (inclusive); None: no lower bound."""
    date_to_unix: int | None = None
    """Documents dated at or before this (inclusive); None: no upper bound."""


def search_filter_from_proto(message: common_pb2.MetadataFilter) -> SearchFilter:
    """The domain filter of a request; unset optional dates mean "no bound"."""
    return SearchFilter(
        document_ids=tuple(message.document_ids),
        media_types=tuple(message.media_types),
        source_uris=tuple(message.source_uris),
        tags=tuple(message.tags),
        date_from_unix=message.date_from_unix if message.HasField("date_from_unix") else None,
        date_to_unix=message.date_to_unix if message.HasField("date_to_unix") else None,
    )


def validate_filter(search_filter: SearchFilter) -> None:
    """Reject a filter no document could match because it is malformed, or one
    too long to run, naming the field."""
    for name in ("document_ids", "media_types", "source_uris", "tags"):
        count = len(getattr(search_filter, name))
        if count > MAX_FILTER_VALUES:
            raise InvalidInputError(
                f"filter.{name} has {count} values; the limit is {MAX_FILTER_VALUES}"
            )
    validate_labels(search_filter.tags, "filter.tags")
    start, end = search_filter.date_from_unix, search_filter.date_to_unix
    if start is not None and end is not None and end < start:
        raise InvalidInputError(
            f"filter.date_to_unix ({end}) is before filter.date_from_unix ({start})"
        )
