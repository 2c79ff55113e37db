"""Authenticated internal calls: a whole platform on mutual TLS (docs/security.md).

Every process has a certificate of a test CA whose common name is its identity;
an internal client ("acme-backend") acts for tenant acme with label hr only.
Without a certificate, with one of another CA, or on the plaintext health port,
a call never reaches a service; a certificate the platform does not know is
UNAUTHENTICATED; a call outside its identity's grant is PERMISSION_DENIED.
"""

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragplatform.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from services.cli.supervisor import Platform, gateway_url
from tests.integration.conftest import REPO

PLATFORM = ("embedding", "retrieval", "generation", "ingestion", "query", "gateway", "ragctl")
ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52341",
    "RAG_INGESTION_ADDR": "127.0.0.1:52342",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52343",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52344",
    "RAG_GENERATION_ADDR": "127.0.0.1:52345",
    "RAG_GATEWAY_PORT": "52395",
    "RAG_DRAIN_SECONDS": "2",
    "RAG_GRPC_CLIENTS": json.dumps({"acme-backend": {"tenant": "acme", "access_labels": ["hr"]}}),
}
HANDBOOK = b"# Handbook\n\nNew employees receive their badge at the Ostend reception desk.\n"
QUESTION = "Where do new employees receive their badge?"


class Authority:
    """A certificate authority that writes `<name>.crt` and `<name>.key` files."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            self._builder(subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        (directory / "ca.crt").write_bytes(
            self.certificate.public_bytes(serialization.Encoding.PEM)
        )

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject if hasattr(self, "certificate") else subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, name: str) -> None:
        """A certificate for `name`, valid for 127.0.0.1 and localhost, server and client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            self._builder(subject, key.public_key())
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        (self.directory / f"{name}.crt").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (self.directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    authority = Authority(directory, "ragplatform test CA")
    for name in (*PLATFORM, "acme-backend", "mallory"):
        authority.issue(name)
    rogue = directory / "rogue"
    rogue.mkdir()
    Authority(rogue, "another CA").issue("query")  # the right name, the wrong CA
    return directory


def tls_env(directory: Path) -> dict[str, str]:
    return {
        "RAG_TLS_CERT_FILE": str(directory / "{process}.crt"),
        "RAG_TLS_KEY_FILE": str(directory / "{process}.key"),
        "RAG_TLS_CA_FILE": str(directory / "ca.crt"),
    }


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, certificates: Path) -> Iterator[Platform]:
    env = {**ENV, **tls_env(certificates)}
    with Platform(tmp_path_factory.mktemp("secure"), env=env) as running:
        yield running


Connect = Callable[..., grpc.Channel]


@pytest.fixture(scope="module")
def connect(certificates: Path) -> Iterator[Connect]:
    """Channels presenting `name`'s certificate (None: no certificate) to `address`."""
    channels: list[grpc.Channel] = []

    def open_channel(address: str, name: str | None, directory: Path = certificates) -> Any:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(certificates / "ca.crt").read_bytes(),
            private_key=(directory / f"{name}.key").read_bytes() if name else None,
            certificate_chain=(directory / f"{name}.crt").read_bytes() if name else None,
        )
        channel = grpc.secure_channel(address, credentials)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


def ask(channel: grpc.Channel, **caller: Any) -> query_pb2.AskResponse:
    request = query_pb2.AskRequest(question=QUESTION)
    if caller:
        request.caller.CopyFrom(common_pb2.Caller(**caller))
    return query_pb2_grpc.QueryServiceStub(channel).Ask(request, timeout=60)


def upload(
    channel: grpc.Channel, tenant: str, writer: common_pb2.Caller | None = None
) -> ingestion_pb2.IngestResult:
    header = ingestion_pb2.DocumentHeader(
        filename="handbook.md", document_id="handbook", tenant=tenant, caller=writer
    )
    messages = iter(
        [
            ingestion_pb2.UploadDocumentRequest(header=header),
            ingestion_pb2.UploadDocumentRequest(data=HANDBOOK),
        ]
    )
    stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
    return stub.UploadDocument(messages, timeout=60).result


def test_the_platform_serves_its_flows_over_mutual_tls(
    platform: Platform, certificates: Path, connect: Connect
) -> None:
    settings = platform.settings
    backend = connect(settings.ingestion_addr, "acme-backend")
    assert upload(backend, "acme", common_pb2.Caller(tenant="acme")).status in (
        ingestion_pb2.IngestResult.STATUS_CREATED,
        ingestion_pb2.IngestResult.STATUS_UNCHANGED,
    )
    answer = ask(connect(settings.query_addr, "acme-backend"), tenant="acme", access_labels=["hr"])
    assert "Ostend" in answer.answer  # query → embedding, retrieval, generation over mTLS

    reply = httpx.post(
        f"{gateway_url(settings)}/v1/documents",
        files={"file": ("badge.md", b"# Badges\n\nLost badges are replaced at reception.\n")},
        timeout=60,
    )
    assert reply.status_code == 201, reply.text  # gateway → ingestion over mTLS

    status = subprocess.run(
        [sys.executable, "-m", "services.cli.ragctl", "status", "--json"],
        env={**os.environ, **ENV, **tls_env(certificates), "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr  # health on the plaintext ports


def test_a_call_without_valid_credentials_never_reaches_a_service(
    platform: Platform, certificates: Path, connect: Connect
) -> None:
    query = platform.settings.query_addr
    assert code_of(lambda: ask(connect(query, None), tenant="acme")) == grpc.StatusCode.UNAVAILABLE
    rogue = connect(query, "query", certificates / "rogue")
    assert code_of(lambda: ask(rogue, tenant="acme")) == grpc.StatusCode.UNAVAILABLE
    unknown = connect(query, "mallory")
    assert code_of(lambda: ask(unknown, tenant="acme")) == grpc.StatusCode.UNAUTHENTICATED

    host, port = query.rsplit(":", 1)
    with grpc.insecure_channel(f"{host}:{int(port) + 2000}") as plaintext:
        health = health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert code_of(lambda: ask(plaintext, tenant="acme")) == grpc.StatusCode.UNAUTHENTICATED


def test_each_identity_calls_only_what_its_grant_allows(
    platform: Platform, connect: Connect
) -> None:
    settings = platform.settings
    backend = connect(settings.query_addr, "acme-backend")
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: ask(backend, tenant="globex")) == denied
    assert code_of(lambda: ask(backend, tenant="acme", access_labels=["finance"])) == denied
    assert code_of(lambda: ask(backend)) == denied  # a client must name its caller
    ingestion = connect(settings.ingestion_addr, "acme-backend")
    assert (
        code_of(lambda: upload(ingestion, "globex", common_pb2.Caller(tenant="globex"))) == denied
    )
    assert code_of(lambda: upload(ingestion, "acme")) == denied
    uris = ingestion_pb2.IngestUrisRequest(uris=["/etc"], tenant="acme")
    stub = ingestion_pb2_grpc.IngestionServiceStub(ingestion)
    assert code_of(lambda: list(stub.IngestUris(uris, timeout=30))) == denied

    # A platform process may call only what its flows need: query never writes.
    as_query = ingestion_pb2_grpc.IngestionServiceStub(connect(settings.ingestion_addr, "query"))
    delete = ingestion_pb2.DeleteDocumentRequest(document_id="handbook", tenant="acme")
    assert code_of(lambda: as_query.DeleteDocument(delete, timeout=30)) == denied
