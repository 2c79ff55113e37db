"""Engine filters in a neutral form, built once for every engine.

What a caller may see and what a search asked for is decided here, condition
for condition; each store translates the result into its engine's filter type
with a small function (`edge.py`, `qdrant.py`), so the backends cannot drift
apart on tenancy or on a filter's meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.search import SearchFilter
from services.common.tenancy import Caller


@dataclass(frozen=True)
class Match:
    """`field` equals `value` (for a list field: holds it)."""

    field: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    """`field` equals one of `values` (for a list field: shares one)."""

    field: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class IsEmpty:
    """`field` is missing, null or an empty list."""

    field: str


@dataclass(frozen=True)
class Range:
    """`gte <= field <= lte`; a bound of None is absent."""

    field: str
    gte: int | None
    lte: int | None


@dataclass(frozen=True)
class AnyOf:
    """At least one of `conditions` holds."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AllOf:
    """Every one of `must` holds and none of `must_not`."""

    must: tuple[Condition, ...]
    must_not: tuple[Condition, ...] = ()


Condition = Match | MatchAny | IsEmpty | Range | AnyOf | AllOf


def match_any(field: str, values: Sequence[str]) -> MatchAny:
    return MatchAny(field, tuple(values))


def access(access_labels: Sequence[str]) -> Condition:
    """Chunks visible to a caller holding `access_labels`: those without access
    labels, or, if the caller holds any, those sharing one with the caller."""
    unrestricted = IsEmpty("access_labels")
    if not access_labels:
        return unrestricted
    return AnyOf((unrestricted, match_any("access_labels", access_labels)))


def of_tenant(tenant: str) -> AllOf:
    """The chunks (or the records) of one tenant."""
    return AllOf((Match("tenant", tenant),))


def of_document(tenant: str, document_id: str) -> AllOf:
    """The chunks (or the record) of one tenant's document."""
    return AllOf((Match("tenant", tenant), Match("document_id", document_id)))


def search_filter(caller: Caller, search_filter: SearchFilter) -> AllOf:
    """The filter of a search: what the caller may see AND what it asked for.

        must:
          tenant == caller.tenant
          access_labels is empty  OR  access_labels has any of caller.access_labels
                                      (the second only when the caller holds labels)
          document_id in filter.document_ids      (each line only when the
          media_type in filter.media_types         filter field is non-empty)
          source_uri in filter.source_uris
          tags has any of filter.tags
          filter.date_from_unix <= document_date_unix <= filter.date_to_unix
                                      (either bound may be absent)
        must_not (only when a date bound is set):
          document_date_unix == 0     (dateless documents never match a date range)

    Stores apply it to every leg of a search and to the fused query, so fusion
    and MMR only ever rank chunks the caller may see and asked for.
    """
    conditions: list[Condition] = [Match("tenant", caller.tenant), access(caller.access_labels)]
    requested = (
        ("document_id", search_filter.document_ids),
        ("media_type", search_filter.media_types),
        ("source_uri", search_filter.source_uris),
        ("tags", search_filter.tags),
    )
    conditions.extend(match_any(key, values) for key, values in requested if values)
    start, end = search_filter.date_from_unix, search_filter.date_to_unix
    if start is None and end is None:
        return AllOf(tuple(conditions))
    conditions.append(Range("document_date_unix", start, end))
    return AllOf(tuple(conditions), must_not=(Match("document_date_unix", 0),))
