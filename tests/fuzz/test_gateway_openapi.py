"""Schemathesis against the gateway's own OpenAPI document, on a real platform.

The gateway app runs in this process (schemathesis' ASGI transport, no socket);
behind it the five gRPC services run as real processes on ports of their own
(5250x), so every request goes the whole way: auth, body limits, the gateway's
HTTP ↔ gRPC mapping, and the services' own validation. Each operation gets
schema-valid requests (positive) and schema-breaking ones (negative); every
response must:

* never be a 5xx (no crash, no unmapped error),
* have a status code, content type, headers and body that the OpenAPI
  document declares for the operation (event streams: each event),
* be 401 without a valid API key (authentication is on: keys are configured).

Schema-breaking requests must not crash the gateway either, but they are not
required to be refused: pydantic's lax mode takes "0" for false and FastAPI the
last of a repeated query parameter, on purpose (schemathesis'
negative_data_rejection check is left out).

Example counts follow the Hypothesis profile (tests/fuzz/profiles.py): bounded
and derandomized in `make test`, long in `make fuzz`.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hypothesis
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import (
    CheckFunction,
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import get_client, shutdown_lifespans

from services.cli.supervisor import Platform
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.fuzz.profiles import scaled

pytestmark = pytest.mark.integration

SERVICES = ("embedding", "retrieval", "generation", "ingestion", "query")
PLATFORM_ENV = {
    "RAG_QUERY_ADDR": "127.0.0.1:52501",
    "RAG_INGESTION_ADDR": "127.0.0.1:52502",
    "RAG_EMBEDDING_ADDR": "127.0.0.1:52503",
    "RAG_RETRIEVAL_ADDR": "127.0.0.1:52504",
    "RAG_GENERATION_ADDR": "127.0.0.1:52505",
    "RAG_GATEWAY_PORT": "52580",  # not started: the gateway runs in this process
    "RAG_DRAIN_SECONDS": "1",
}
KEY = "fuzz-key"
API_KEYS = f'{{"{KEY}": {{"tenant": "fuzz", "access_labels": ["hr"]}}}}'
AUTH = {"Authorization": f"Bearer {KEY}"}
SEEDED = {
    "handbook.md": b"# Handbook\n\nLeave is 25 days a year.\n\n## Travel\n\nBook trains.\n",
    "notes.txt": b"Release notes\n\nThe gateway answers in JSON or as Server-Sent Events.\n",
}
"""Documents uploaded before fuzzing, so that lists, asks and lookups find some."""

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


def gateway_settings(data_dir: Path) -> GatewaySettings:
    """The in-process gateway's settings: the platform's addresses, API keys on,
    no rate limits (they answer 429 before the services see anything)."""
    fields: dict[str, Any] = {key[4:].lower(): value for key, value in PLATFORM_ENV.items()}
    limits = {
        f"gateway_{kind}_rate_per_{per}": 0.0
        for kind in ("ask", "upload", "write")
        for per in ("key", "tenant")
    }
    return GatewaySettings.model_validate(
        {
            **fields,
            **limits,
            "data_dir": data_dir,
            "gateway_api_keys": API_KEYS,
            "metrics_enabled": False,
        }
    )


def operation_cases() -> list[tuple[str, GenerationMode]]:
    """(operation label such as "POST /v1/ask", generation mode) for every operation
    the gateway's OpenAPI document declares: schema-valid requests for each, and
    schema-breaking ones for each that takes parameters or a body."""
    spec = create_app(gateway_settings(Path("unused"))).openapi()
    cases = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


@dataclass
class Gateway:
    schema: schemathesis.BaseSchema
    platform: Platform


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("fuzz-platform")
    with Platform(data_dir, env=PLATFORM_ENV, services=SERVICES) as platform:
        app = create_app(gateway_settings(data_dir))
        config = schemathesis.Config.from_dict(
            {"auth": {"openapi": {"HTTPBearer": {"bearer": KEY}}}}
        )
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
        with get_client(cast(Any, app)) as client:
            for name, data in SEEDED.items():
                reply = client.post("/v1/documents", files={"file": (name, data)}, headers=AUTH)
                assert reply.status_code in (200, 201), reply.text
        try:
            yield Gateway(schema, platform)
        finally:
            shutdown_lifespans()  # closes the app's gRPC channels before the services stop


@pytest.mark.parametrize(
    ("label", "mode"),
    operation_cases(),
    ids=[f"{label} {mode}" for label, mode in operation_cases()],
)
def test_gateway_conforms_to_its_openapi(
    gateway: Gateway, label: str, mode: GenerationMode
) -> None:
    method, path = label.split(" ", 1)
    operation = gateway.schema[path][method]

    @hypothesis.settings(max_examples=scaled(0.5))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()
