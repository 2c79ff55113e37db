"""Document and chunk ids: stable across calls, distinct when their inputs differ."""

import hashlib
import re
import uuid

import pytest

from services.common.errors import InvalidInputError
from services.ingestion.ids import (
    CHUNK_ID_NAMESPACE,
    chunk_id_for,
    content_sha256,
    document_id_for,
    normalise_source_uri,
    validate_document_id,
)


def test_document_id_is_stable_and_well_formed() -> None:
    uri = "file:///srv/docs/leave-policy.md"
    first = document_id_for(uri)
    assert first == document_id_for(uri)
    assert re.fullmatch(r"doc_[0-9a-f]{20}", first)
    expected = "doc_" + hashlib.sha256(uri.encode()).hexdigest()[:20]
    assert first == expected


def test_document_id_differs_per_source() -> None:
    ids = {
        document_id_for("file:///srv/docs/leave-policy.md"),
        document_id_for("file:///srv/docs/expense-policy.md"),
        document_id_for("file:///srv/docs/Leave-Policy.md"),  # paths are case-sensitive
        document_id_for("https://intranet.example.com/policies/leave"),
    }
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("  https://intranet.example.com/a  ", "https://intranet.example.com/a"),
        ("HTTPS://Intranet.Example.COM/a", "https://intranet.example.com/a"),
        ("https://intranet.example.com:443/a", "https://intranet.example.com/a"),
        ("http://intranet.example.com:80/a", "http://intranet.example.com/a"),
        ("https://intranet.example.com/a#section-2", "https://intranet.example.com/a"),
        ("https://intranet.example.com", "https://intranet.example.com/"),
        ("file:///srv/docs/leave%20policy.md", "file:///srv/docs/leave%20policy.md"),
        ("file:///srv/docs/leave.md#annual", "file:///srv/docs/leave.md"),
    ],
)
def test_equivalent_uri_spellings_share_an_id(spelling: str, canonical: str) -> None:
    assert normalise_source_uri(spelling) == canonical
    assert document_id_for(spelling) == document_id_for(canonical)


def test_uri_parts_that_matter_are_kept() -> None:
    assert normalise_source_uri("https://h.example/a?page=2") == "https://h.example/a?page=2"
    assert normalise_source_uri("https://h.example:8443/a") == "https://h.example:8443/a"
    assert normalise_source_uri("C:\\docs\\Report.txt") == "C:\\docs\\Report.txt"
    assert normalise_source_uri("notes/Report.txt") == "notes/Report.txt"


def test_empty_source_uri_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="source URI is empty"):
        document_id_for("   ")


@pytest.mark.parametrize(
    "doc_id", ["a", "policy-2024", "HR:leave_policy.v2", "x" * 128, "doc_0123456789abcdef0123"]
)
def test_valid_client_document_ids_pass_through(doc_id: str) -> None:
    assert validate_document_id(doc_id) == doc_id


@pytest.mark.parametrize(
    ("doc_id", "fragment"),
    [
        ("", "is empty"),
        ("has space", "'has space'"),
        ("a/b", "'a/b'"),
        ("ünïcode", "'ünïcode'"),
        ("x" * 129, "129 characters"),
    ],
)
def test_invalid_client_document_ids_are_named(doc_id: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match="document id") as caught:
        validate_document_id(doc_id)
    assert fragment in str(caught.value)
    assert "1 to 128 characters" in str(caught.value)


def test_very_long_invalid_id_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_document_id("y" * 10_000)
    assert len(str(caught.value)) < 300


LEAVE = "Employees get 27 days of annual leave."


def test_chunk_id_is_a_canonical_uuid5_and_stable() -> None:
    chunk_id = chunk_id_for("acme", "doc_abc", 3, LEAVE)
    parsed = uuid.UUID(chunk_id)
    assert str(parsed) == chunk_id
    assert parsed.version == 5
    assert chunk_id == chunk_id_for("acme", "doc_abc", 3, LEAVE)
    digest = hashlib.sha256(LEAVE.encode()).hexdigest()
    assert chunk_id == str(uuid.uuid5(CHUNK_ID_NAMESPACE, f"acme\x1fdoc_abc\x1f3\x1f{digest}"))


def test_chunk_id_changes_with_tenant_document_ordinal_and_text() -> None:
    base = chunk_id_for("acme", "doc_abc", 3, LEAVE)
    variants = {
        chunk_id_for("globex", "doc_abc", 3, LEAVE),  # the same document in another tenant
        chunk_id_for("acme", "doc_abd", 3, LEAVE),
        chunk_id_for("acme", "doc_abc", 4, LEAVE),
        chunk_id_for("acme", "doc_abc", 3, "Employees get 28 days of annual leave."),
        # The separator keeps ("doc_1", 23) and ("doc_12", 3) apart.
        chunk_id_for("acme", "doc_abc3", 3, LEAVE),
    }
    assert base not in variants
    assert len(variants) == 5
    assert chunk_id_for("acme", "doc_1", 23, "t") != chunk_id_for("acme", "doc_12", 3, "t")
    # ... and the tenant from the document id: ("a.b", "c") is not ("a", "b.c").
    assert chunk_id_for("a.b", "c", 0, "t") != chunk_id_for("a", "b.c", 0, "t")
    assert chunk_id_for("ab", "c", 0, "t") != chunk_id_for("a", "bc", 0, "t")


def test_content_sha256_matches_the_standard_digest() -> None:
    assert content_sha256(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert content_sha256(b"") == hashlib.sha256(b"").hexdigest()
    assert content_sha256(b"a") != content_sha256(b"b")
