"""Deterministic identifiers for documents and chunks.

Ids are derived from content and source rather than generated randomly so that
re-ingesting the same file replaces its chunks in place instead of duplicating
them, and a retried request after a timeout produces exactly the same ids.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from urllib.parse import urlsplit, urlunsplit

from services.common.errors import InvalidInputError

# Fixed namespace for chunk UUIDs. Changing it would change every chunk id and
# orphan every indexed chunk, so it is a constant, not configuration.
CHUNK_ID_NAMESPACE = uuid.UUID("6f1c2a4e-3b8d-5e07-9a51-7c2d0e4b9f83")

_DOCUMENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN_ID_CHARS = 60


def normalise_source_uri(source_uri: str) -> str:
    """Canonical form of a source URI, so trivially different spellings share an id.

    Lower-cases scheme and host, drops default ports and #fragments (they name a
    place inside the same document); path and query are case-sensitive and kept.
    Values without a scheme (plain paths, names) are only stripped: resolving
    them against a filesystem is the caller's job, this function stays pure.
    """
    uri = source_uri.strip()
    if not uri:
        raise InvalidInputError("source URI is empty; cannot derive a document id")
    parts = urlsplit(uri)
    # One-letter "schemes" are Windows drive letters (C:\\docs\\a.txt), not URLs.
    if len(parts.scheme) <= 1:
        return uri
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    if parts.hostname is not None:
        host = parts.hostname  # already lower-cased by urlsplit
        if ":" in host:
            host = f"[{host}]"  # IPv6 literal
        try:
            port = parts.port
        except ValueError:
            port = None
        userinfo = netloc.rpartition("@")[0]
        netloc = (f"{userinfo}@" if userinfo else "") + host
        if port is not None and port != _DEFAULT_PORTS.get(scheme):
            netloc += f":{port}"
    path = parts.path
    if scheme in _DEFAULT_PORTS and not path:
        path = "/"
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def document_id_for(source_uri: str) -> str:
    """Stable id for a document that the client did not name: doc_ + 20 hex of sha256.

    80 bits of hash make accidental collisions irrelevant at any realistic
    corpus size while keeping ids short enough to read in logs and citations.
    """
    normalised = normalise_source_uri(source_uri)
    return "doc_" + hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:20]


def validate_document_id(doc_id: str) -> str:
    """Return a client-chosen document id if safe to use as a key and in URLs/logs."""
    if _DOCUMENT_ID.fullmatch(doc_id) is None:
        shown = doc_id if len(doc_id) <= _SHOWN_ID_CHARS else doc_id[:_SHOWN_ID_CHARS] + "..."
        problem = "is empty" if not doc_id else f"({len(doc_id)} characters) is invalid"
        raise InvalidInputError(
            f"document id {shown!r} {problem}: use 1 to 128 characters from "
            "A-Z, a-z, 0-9, '.', '_', ':' and '-'"
        )
    return doc_id


def chunk_id_for(tenant: str, document_id: str, ordinal: int, text: str) -> str:
    """UUID for a chunk (the vector store accepts only UUIDs or integers as point ids).

    Derived from tenant, document, position and content, so an unchanged
    re-ingest yields identical ids, any edit yields new ones for the chunks it
    touched, and the same document ingested by two tenants never shares a chunk
    id (the embedded engine uses chunk ids as point ids, unique across tenants).
    The separator cannot occur in a tenant id or a document id, so the parts
    never run together.
    """
    text_digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    name = f"{tenant}\x1f{document_id}\x1f{ordinal}\x1f{text_digest}"
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, name))


def content_sha256(data: bytes) -> str:
    """Hex sha256 of a document's bytes; an unchanged hash lets a re-ingest be skipped."""
    return hashlib.sha256(data).hexdigest()
