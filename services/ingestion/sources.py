"""Where IngestUris reads documents: local files and Cloud Storage objects.

A URI names one document or many (a directory; a bucket prefix or glob), and
each document's URI is its identity (`file:///abs/path`, `gs://bucket/name`),
from which its id derives. A Cloud Storage object is read at the generation it
was listed with (a precondition), so a document is never a mix of two versions;
its generation is recorded with the document, so an object whose generation is
already indexed is skipped before it is read.

Who may read what: an operator's request (no caller) may name any source; a
request made for a caller (the gateway's, an internal client's) only those
under its tenant's prefixes in RAG_INGESTION_SOURCES, since the ingestion
service can read files and buckets that the tenant must not.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from google.api_core import exceptions as google_errors

from services.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    RateLimitedError,
    UnavailableError,
    UnimplementedError,
)
from services.ingestion.parsers import SUPPORTED_EXTENSIONS

_GLOB = frozenset("*?[")
_READ_ATTEMPTS = 3
"""Reads of an object that keeps being replaced between its listing and its read."""


@dataclass(frozen=True)
class SourceObject:
    """One document of a source, as listed (nothing read yet)."""

    uri: str
    """The document's identity: file:///abs/path or gs://bucket/name."""
    name: str
    """Its file name: type detection and the default title."""
    size: int
    modified_unix: int
    """The document's date: a file's modification time, an object's update time."""
    version: str = ""
    """A Cloud Storage object's generation; "" for files."""


Expanded = SourceObject | tuple[str, PlatformError]
"""An object to ingest, or the URI that could not be expanded and why."""


class Source(Protocol):
    """A kind of URI (`file`, `gs`)."""

    def expand(self, uri: str) -> list[Expanded]:
        """The supported documents `uri` names, sorted by URI."""
        ...

    def read(self, item: SourceObject) -> tuple[bytes, SourceObject]:
        """The object's bytes, and the object they are (a newer generation if it
        was replaced since it was listed)."""
        ...


def normalise_uri(uri: str) -> str:
    """`file:///abs/path` for a file URI or a plain path; other schemes unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else uri
        return Path(path).expanduser().resolve().as_uri()
    return uri


class LocalFiles:
    """Files on the ingestion service's own file system (operators' imports)."""

    def expand(self, uri: str) -> list[Expanded]:
        normalised = normalise_uri(uri)
        path = Path(unquote(urlparse(normalised).path))
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUPPORTED_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            return [self._object(p) for p in files]
        if not path.exists():
            return [(normalised, NotFoundError(f"{path}: no such file or directory"))]
        if not os.access(path, os.R_OK):
            return [(normalised, PermissionDeniedError(f"{path}: permission denied"))]
        return [self._object(path)]

    def read(self, item: SourceObject) -> tuple[bytes, SourceObject]:
        path = Path(unquote(urlparse(item.uri).path))
        return path.read_bytes(), item

    @staticmethod
    def _object(path: Path) -> SourceObject:
        status = path.stat()
        return SourceObject(path.as_uri(), path.name, status.st_size, int(status.st_mtime))


class CloudStorage:
    """Objects in Cloud Storage: `gs://bucket/name` (one object, or the "folder"
    of that name), `gs://bucket/prefix/` and globs such as `gs://bucket/**.pdf`.

    Application Default Credentials (Workload Identity on GKE); with
    STORAGE_EMULATOR_HOST set, the emulator, anonymously."""

    def __init__(self, client: Callable[[], Any], page_size: int = 1000) -> None:
        """`client` makes the google-cloud-storage Client, on first use; listings
        are read `page_size` objects per request."""
        self._make_client = client
        self._page_size = page_size
        self._client: Any = None
        self._lock = threading.Lock()

    def expand(self, uri: str) -> list[Expanded]:
        bucket, name = _bucket_and_name(uri)
        try:
            client = self._storage()
            if name and not _GLOB & set(name) and not name.endswith("/"):
                blob = client.bucket(bucket).get_blob(name)
                if blob is not None:
                    return [self._object(bucket, blob)]
                name += "/"  # not an object: the folder of that name
            matches = _glob_matcher(name)
            if _GLOB & set(name):
                prefix = name[: min(name.index(c) for c in _GLOB if c in name)]
                blobs = client.list_blobs(
                    bucket, prefix=prefix, match_glob=name, page_size=self._page_size
                )
            else:
                blobs = client.list_blobs(bucket, prefix=name, page_size=self._page_size)
            found = [
                self._object(bucket, blob)
                for blob in blobs
                if not blob.name.endswith("/")
                and Path(blob.name).suffix.lower() in SUPPORTED_EXTENSIONS
                and matches(blob.name)
            ]
        except google_errors.GoogleAPICallError as error:
            return [(uri, _platform_error(error, uri))]
        if not found:
            return [(uri, NotFoundError(f"{uri}: no supported object there"))]
        found.sort(key=lambda item: item.uri)
        return [*found]

    def read(self, item: SourceObject) -> tuple[bytes, SourceObject]:
        """The bytes of the listed generation (asked for by number, with a
        precondition on it); if the object was replaced since, those of the new
        one, read the same way."""
        bucket, name = _bucket_and_name(item.uri)
        client = self._storage()
        for _ in range(_READ_ATTEMPTS):
            blob = client.bucket(bucket).blob(name, generation=int(item.version))
            try:
                data: bytes = blob.download_as_bytes(if_generation_match=int(item.version))
                return data, item
            except (google_errors.PreconditionFailed, google_errors.NotFound):
                current = client.bucket(bucket).get_blob(name)
                if current is None:
                    raise NotFoundError(f"{item.uri}: deleted while it was being read") from None
                item = self._object(bucket, current)
            except google_errors.GoogleAPICallError as error:
                raise _platform_error(error, item.uri) from None
        raise UnavailableError(f"{item.uri}: replaced during every read; retry")

    def _storage(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._make_client()
                except Exception as error:  # no credentials, no project: say so, once
                    raise FailedPreconditionError(
                        f"Cloud Storage: cannot create a client: {error}"
                    ) from None
            return self._client

    @staticmethod
    def _object(bucket: str, blob: Any) -> SourceObject:
        updated = blob.updated.timestamp() if blob.updated is not None else 0
        return SourceObject(
            uri=f"gs://{bucket}/{blob.name}",
            name=blob.name.rsplit("/", 1)[-1],
            size=int(blob.size or 0),
            modified_unix=int(updated),
            version=str(blob.generation),
        )


def _glob_matcher(name: str) -> Callable[[str], bool]:
    """Whether an object name matches `name` as Cloud Storage's matchGlob does
    (`**` across folders, `*` and `?` within one); names without a glob match
    all. Applied here too: emulators may ignore matchGlob."""
    if not _GLOB & set(name):
        return lambda _: True
    pattern, i = [], 0
    while i < len(name):
        if name.startswith("**", i):
            pattern.append(".*")
            i += 2
        elif name[i] == "*":
            pattern.append("[^/]*")
            i += 1
        elif name[i] == "?":
            pattern.append("[^/]")
            i += 1
        elif name[i] == "[" and "]" in name[i + 1 :]:
            end = name.index("]", i + 1)
            pattern.append(name[i : end + 1])
            i = end + 1
        else:
            pattern.append(re.escape(name[i]))
            i += 1
    compiled = re.compile("".join(pattern))
    return lambda object_name: compiled.fullmatch(object_name) is not None


def _bucket_and_name(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "gs" or not parsed.netloc:
        raise InvalidInputError(f"{uri}: a Cloud Storage URI is gs://bucket/name")
    return parsed.netloc, unquote(parsed.path).lstrip("/")


def _platform_error(error: google_errors.GoogleAPICallError, uri: str) -> PlatformError:
    """The platform's error for a failed Cloud Storage call on `uri`."""
    message = f"{uri}: Cloud Storage: {error.message or error}"
    if isinstance(error, google_errors.NotFound):
        return NotFoundError(message)
    if isinstance(error, google_errors.Forbidden | google_errors.Unauthorized):
        return PermissionDeniedError(message)
    if isinstance(error, google_errors.TooManyRequests):
        return RateLimitedError(message)
    return UnavailableError(message)


class Sources:
    """Every source by URI scheme, and which of them each tenant may read."""

    def __init__(self, by_scheme: Mapping[str, Source], allowed: Mapping[str, Sequence[str]]):
        self._by_scheme = dict(by_scheme)
        self._allowed = {tenant: tuple(prefixes) for tenant, prefixes in allowed.items()}

    def expand(self, uri: str) -> list[Expanded]:
        normalised = normalise_uri(uri)
        scheme = urlparse(normalised).scheme
        source = self._by_scheme.get(scheme)
        if source is None:
            known = ", ".join(f"{s}://" for s in sorted(self._by_scheme))
            message = f"{uri}: the {scheme}:// scheme is not supported ({known} are)"
            return [(normalised, UnimplementedError(message))]
        return source.expand(normalised)

    def read(self, item: SourceObject) -> tuple[bytes, SourceObject]:
        return self._by_scheme[urlparse(item.uri).scheme].read(item)

    def authorise(self, uris: Sequence[str], tenant: str) -> None:
        """PermissionDeniedError naming the first URI outside `tenant`'s prefixes."""
        prefixes = self._allowed.get(tenant, ())
        for uri in uris:
            normalised = normalise_uri(uri)
            # A prefix "gs://b/docs/" also admits the folder it names, "gs://b/docs".
            if not any(f"{normalised}/".startswith(prefix) for prefix in prefixes):
                raise PermissionDeniedError(
                    f"{uri}: tenant {tenant!r} may not import from there "
                    f"(RAG_INGESTION_SOURCES gives it {list(prefixes) or 'nothing'})"
                )


def parse_allowed_sources(text: str) -> dict[str, list[str]]:
    """RAG_INGESTION_SOURCES: a JSON object from tenant to URI prefixes."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
        allowed = {str(tenant): [str(p) for p in prefixes] for tenant, prefixes in raw.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"RAG_INGESTION_SOURCES is not a JSON object of lists: {error}") from None
    for tenant, prefixes in allowed.items():
        for prefix in prefixes:
            if urlparse(prefix).scheme not in ("gs", "file") or prefix.count("/") < 3:
                raise ValueError(
                    f"RAG_INGESTION_SOURCES: {tenant}: {prefix!r} is not a gs://bucket/ "
                    "or file:///dir/ prefix"
                )
    return allowed
