"""Who a request acts for, and the checks every service applies to it.

Tenancy is enforced by the storage engine's own filter (see the retrieval
store); these are the shared rules for what a valid tenant, access label or tag
is, so that the gateway, the query, ingestion and retrieval services reject the
same inputs with the same messages before anything is read or written.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from services.common.errors import InvalidInputError

DEFAULT_TENANT = "default"
"""The tenant of the embedded world: ragctl and a gateway without API keys act for it."""

MAX_LABELS = 64
"""Upper bound on access labels or tags per document or caller: they become
engine filter conditions, and a bound keeps one request's filter small."""

_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL = re.compile(r"[^\x00-\x1f]{1,128}")


@dataclass(frozen=True)
class Caller:
    """Who a read acts for: the tenant whose data it may see, and the access
    labels the caller holds (a labelled document is visible only to callers
    holding one of its labels)."""

    tenant: str
    access_labels: tuple[str, ...] = ()


def validate_tenant(tenant: str) -> str:
    """Return `tenant` if it is a well-formed tenant id, else raise InvalidInputError.

    A missing tenant is an error rather than "every tenant": the one request
    that forgot it must fail, not read everybody's documents.
    """
    if not tenant:
        raise InvalidInputError("tenant is missing; every request must name its tenant")
    if _TENANT.fullmatch(tenant) is None:
        raise InvalidInputError(
            f"tenant {tenant[:80]!r} is invalid: use 1 to 64 characters from "
            "A-Z, a-z, 0-9, '.', '_' and '-'"
        )
    return tenant


def validate_labels(labels: Sequence[str], what: str) -> tuple[str, ...]:
    """Return `labels` (access labels or tags) sorted and without duplicates, or
    raise InvalidInputError naming `what` and the bad label."""
    for label in labels:
        if _LABEL.fullmatch(label) is None or label.strip() != label:
            raise InvalidInputError(
                f"{what} {label[:80]!r} is invalid: 1 to 128 characters, no control "
                "characters, no leading or trailing spaces"
            )
    unique = tuple(sorted(set(labels)))
    if len(unique) > MAX_LABELS:
        raise InvalidInputError(f"{what}: {len(unique)} given, the limit is {MAX_LABELS}")
    return unique


def validate_caller(caller: Caller) -> Caller:
    """Check the tenant and access labels of a read."""
    validate_tenant(caller.tenant)
    validate_labels(caller.access_labels, "access label")
    return caller


def may_see(caller_labels: Collection[str], document_labels: Collection[str]) -> bool:
    """Whether a caller holding `caller_labels` may see a document (or chunk)
    labelled `document_labels`: the rule every search filter applies in the
    engine. No labels: the whole tenant; else a caller holding one of them."""
    return not document_labels or not set(document_labels).isdisjoint(caller_labels)
