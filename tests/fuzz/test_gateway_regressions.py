"""What the gateway fuzzing found, pinned: each request once crashed the gateway
(a 500 from an exception while building the gRPC request) or got a response its
OpenAPI document did not describe.

No services run here: every one of these requests is answered before the gateway
calls any (nothing listens on the addresses it is given).
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest
import pytest_asyncio

from services.gateway.app import create_app
from services.gateway.routes.query import _sse
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

INT64_OVER = 2**63
UNREACHABLE = {
    f"{name}_addr": f"127.0.0.1:{port}"
    for name, port in (
        ("query", 52511),
        ("ingestion", 52512),
        ("embedding", 52513),
        ("retrieval", 52514),
        ("generation", 52515),
    )
}


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings.model_validate({**UNREACHABLE, "metrics_enabled": False}))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert field in error["message"]


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/ask/stream"])
@pytest.mark.parametrize("bound", ["date_from_unix", "date_to_unix"])
async def test_filter_date_over_int64_is_refused(
    client: httpx.AsyncClient, path: str, bound: str
) -> None:
    body = {"question": "q", "filter": {bound: INT64_OVER}}
    assert_refused(await client.post(path, json=body), bound)
    body = {"question": "q", "filter": {bound: -INT64_OVER - 1}}
    assert_refused(await client.post(path, json=body), bound)


async def test_upload_date_over_int64_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/documents",
        files={"file": ("a.txt", b"text")},
        data={"document_date_unix": str(INT64_OVER)},
    )
    assert_refused(response, "document_date_unix")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"question": "\\ud800"}', "question"),
        ('{"question": "q", "routing_key": "a\\udfffb"}', "routing_key"),
        ('{"question": "q", "filter": {"tags": ["ok", "\\udc00"]}}', "tags"),
    ],
)
async def test_lone_surrogates_are_refused(
    client: httpx.AsyncClient, body: str, field: str
) -> None:
    """JSON may escape half of a UTF-16 surrogate pair; such a string is no Unicode
    text, and protobuf cannot encode it."""
    headers = {"Content-Type": "application/json"}
    response = await client.post("/v1/ask", content=body, headers=headers)
    assert_refused(response, field)


def sse_events(stream: bytes) -> list[dict[str, Any]]:
    """Server-Sent Events as schemathesis reads them: {"event": ..., "data": ...}."""
    events = []
    for block in stream.decode().strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append(fields)
    return events


async def test_openapi_describes_each_event_of_an_answer_stream(client: httpx.AsyncClient) -> None:
    """Each event is {event, data} (a schema of `text/event-stream` describes one
    event), not the whole stream as one string."""
    spec = (await client.get("/openapi.json")).json()
    for path in ("/v1/ask", "/v1/ask/stream"):
        schema = spec["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        stream = b"".join(
            [
                _sse("delta", {"text": "Leave is 25 days [1]."}),
                _sse("restart", {"reason": "escalated"}),
                _sse("answer", {"answer": "Leave is 25 days [1].", "citations": []}),
                _sse("error", {"error": {"code": "UNAVAILABLE", "message": "gone"}}),
            ]
        )
        for event in sse_events(stream):
            jsonschema.validate(event, schema["schema"])
            json.loads(event["data"])
