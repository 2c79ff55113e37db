"""Open-time migrations of the embedded engine's data directory.

A directory written by an older release is brought to the current layout when
the store opens it, so an upgrade needs no separate step: chunk shards written
before keyword search gain their BM25 vectors, and data written before tenancy
gains a tenant. Each migration is idempotent and survives an interruption.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from qdrant_edge import (
    CountRequest,
    EdgeConfig,
    EdgeShard,
    Filter,
    IsEmptyCondition,
    Point,
    ScrollRequest,
    UpdateOperation,
)

from services.common.tenancy import DEFAULT_TENANT
from services.retrieval.schema import DENSE, KEYWORD, SCROLL_BATCH, chunk_vectors

log = logging.getLogger(__name__)

LEGACY_TENANT: Final = DEFAULT_TENANT
"""Tenant given on open to chunks and records written before tenancy: the one
ragctl and a gateway without API keys act for, so an existing deployment keeps
answering from its documents."""
LEGACY_RECORD_NAMESPACE: Final = uuid.UUID("3f6c2a52-7e0b-5d8e-9a41-6c0b7f1d2e90")
"""Namespace of the registry ids written before tenancy: uuid5(it, document_id)."""

_MIGRATING_SUFFIX: Final = ".migrating"
_REPLACED_SUFFIX: Final = ".pre-bm25"


def persisted_dimension(config_file: Path, vector_name: str) -> int | None:
    """The size of `vector_name` recorded in a shard config, if readable."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        size = config["vectors"][vector_name]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # let the engine's own compatibility check decide
    return size if isinstance(size, int) else None


def lacks_keyword_vectors(config_file: Path) -> bool:
    """Whether the chunk shard config at `config_file` predates keyword search."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return KEYWORD not in (config.get("sparse_vectors") or {})
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: let the engine's own compatibility check decide


def add_keyword_vectors(path: Path, config: EdgeConfig) -> None:
    """Rebuild a chunk shard written before keyword search, adding BM25 vectors.

    The engine refuses to load a shard with a vector its segments lack, and
    cannot add one in place, so the points (dense vectors and payloads, which
    hold the text) are copied into a new shard beside it with their BM25
    vectors. The old shard is only removed after the new one is complete and
    renamed into place; an interruption at any point leaves either the old
    shard (the migration re-runs) or a finished one
    (`finish_interrupted_migration`).
    """
    staging = path.with_name(path.name + _MIGRATING_SUFFIX)
    replaced = path.with_name(path.name + _REPLACED_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    old = EdgeShard.load(str(path))  # with its persisted config
    try:
        new = EdgeShard.create(str(staging), config)
        try:
            offset: Any = None
            while True:
                records, offset = old.scroll(
                    ScrollRequest(
                        offset=offset, limit=SCROLL_BATCH, with_payload=True, with_vector=[DENSE]
                    )
                )
                points = [_with_keyword_vector(r.id, r.vector, r.payload or {}) for r in records]
                if points:
                    new.update(UpdateOperation.upsert_points(points))
                if offset is None:
                    break
            new.flush()
        finally:
            new.close()
    finally:
        old.close()
    path.rename(replaced)
    staging.rename(path)
    shutil.rmtree(replaced)


def finish_interrupted_migration(path: Path) -> None:
    """Complete or roll back an `add_keyword_vectors` that was interrupted."""
    replaced = path.with_name(path.name + _REPLACED_SUFFIX)
    if not replaced.exists():
        return
    if path.exists():  # the new shard is in place; only the old one is left
        shutil.rmtree(replaced)
    else:  # stopped between the two renames: restore the old shard, migrate again
        replaced.rename(path)


def _with_keyword_vector(point_id: Any, vector: Any, payload: Mapping[str, Any]) -> Point:
    dense = vector[DENSE] if isinstance(vector, dict) else vector
    title, text = str(payload.get("title", "")), str(payload.get("text", ""))
    return Point(point_id, chunk_vectors(dense, title, text, lambda terms: terms), dict(payload))


def migrate_to_tenancy(
    chunks: EdgeShard, registry: EdgeShard, record_id: Callable[[str, str], str]
) -> None:
    """Give chunks and records written before tenancy the tenant `LEGACY_TENANT`.

    Such points lack the tenant (and the access labels, tags and date) in their
    payload, so no search would ever match them. Chunks keep their ids and get
    the missing fields in one engine update. Records move to the tenant-scoped
    id (`record_id(tenant, document_id)`): each batch is written under the new
    id before the old one is deleted, so an interruption leaves at worst a
    duplicate that the next open resolves (the old record still lacks the
    tenant and is moved again, to the same id). A migrated directory has no
    point without a tenant, which one indexed count per shard checks.
    """
    untenanted = Filter(must=[IsEmptyCondition("tenant")])
    legacy_fields = {
        "tenant": LEGACY_TENANT,
        "access_labels": [],
        "tags": [],
        "document_date_unix": 0,
    }
    migrated = False
    if chunks.count(CountRequest(exact=True, filter=untenanted)):
        chunks.update(UpdateOperation.set_payload_by_filter(untenanted, legacy_fields))
        chunks.flush()
        migrated = True
    while True:
        records, _ = registry.scroll(
            ScrollRequest(
                limit=SCROLL_BATCH, filter=untenanted, with_payload=True, with_vector=False
            )
        )
        if not records:
            break
        moved = []
        for record in records:
            payload = {**(record.payload or {}), **legacy_fields}
            moved.append(Point(record_id(LEGACY_TENANT, str(payload["document_id"])), {}, payload))
        registry.update(UpdateOperation.upsert_points(moved))
        registry.update(UpdateOperation.delete_points([record.id for record in records]))
        migrated = True
    if migrated:
        registry.flush()
        log.info("vector store migrated to tenancy: existing data is tenant %r", LEGACY_TENANT)
