"""The configuration of authenticated internal calls (`services/runtime/security.py`);
the behaviour, over real TLS between real processes, is tests/integration/test_security.py."""

from pathlib import Path

import pytest

from services.runtime.security import ClientGrant, TlsFiles, parse_clients
from services.runtime.settings import PlatformSettings


def test_tls_is_off_without_files_and_refused_with_only_some() -> None:
    assert TlsFiles.of(PlatformSettings(), "query") is None
    partial = PlatformSettings(tls_cert_file="/tls/query.crt")
    with pytest.raises(ValueError, match="TLS needs RAG_TLS_KEY_FILE, RAG_TLS_CA_FILE as well"):
        TlsFiles.of(partial, "query")


def test_each_process_finds_its_own_certificate() -> None:
    settings = PlatformSettings(
        tls_cert_file="/tls/{process}.crt", tls_key_file="/tls/{process}.key", tls_ca_file="/ca"
    )
    files = TlsFiles.of(settings, "ingestion")
    assert files == TlsFiles(Path("/tls/ingestion.crt"), Path("/tls/ingestion.key"), Path("/ca"))


def test_client_grants_are_parsed_and_checked() -> None:
    grants = parse_clients('{"acme-backend": {"tenant": "acme", "access_labels": ["hr"]}}')
    assert grants == {"acme-backend": ClientGrant(tenant="acme", access_labels=("hr",))}
    assert parse_clients("") == {}
    not_json, unknown_field, no_tenant = (
        "acme",
        '{"c": {"tenant": "acme", "admin": true}}',
        '{"c": {"access_labels": []}}',
    )
    for text in (not_json, unknown_field, no_tenant):
        with pytest.raises(ValueError, match="RAG_GRPC_CLIENTS is not a JSON object"):
            parse_clients(text)
    with pytest.raises(ValueError, match="'gateway' is a platform identity"):
        parse_clients('{"gateway": {"tenant": "acme"}}')
    with pytest.raises(Exception, match="tenant 'a b' is invalid"):
        parse_clients('{"c": {"tenant": "a b"}}')
