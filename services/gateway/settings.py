"""Gateway settings: the platform's, plus the API keys and whom each acts for.

RAG_GATEWAY_API_KEYS is parsed when the settings are read, so that a malformed
value stops the gateway at startup with a message naming the entry by
position, never the keys (they are secrets).
"""

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.errors import InvalidInputError
from services.common.tenancy import (
    DEFAULT_TENANT,
    Caller,
    validate_caller,
    validate_labels,
    validate_tenant,
)
from services.gateway.errors import describe_problems
from services.gateway.ratelimit import ROUTE_CLASSES, ClassLimits, Rate, RouteClass
from services.runtime.settings import PlatformSettings

API_KEYS_FORMAT = '{"<key>": {"tenant": "<tenant>", "access_labels": ["<label>", ...]}}'
"""The shape of RAG_GATEWAY_API_KEYS (access_labels may be left out)."""


class _Grant(BaseModel):
    """What one API key acts as: one entry of RAG_GATEWAY_API_KEYS."""

    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    tenant: str
    access_labels: list[str] = Field(default_factory=list)


def parse_api_keys(text: str) -> dict[str, Caller]:
    """The caller each API key acts as, from RAG_GATEWAY_API_KEYS; {} when it is blank.

    Raises ValueError naming the problem. Entries are named by position, never
    by key: the message ends up in startup logs, and the keys are secrets.
    """
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"RAG_GATEWAY_API_KEYS is not JSON ({error.msg} at character {error.pos}); "
            f"expected {API_KEYS_FORMAT}"
        ) from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"RAG_GATEWAY_API_KEYS must be a non-empty JSON object {API_KEYS_FORMAT}")
    grants: dict[str, Caller] = {}
    for position, (key, value) in enumerate(data.items(), start=1):
        where = f"RAG_GATEWAY_API_KEYS entry {position}"
        if not key or key != key.strip():
            raise ValueError(f"{where}: the key is empty or starts or ends with a space")
        try:
            grant = _Grant.model_validate(value)
            labels = validate_labels(grant.access_labels, "access label")
            grants[key] = validate_caller(Caller(grant.tenant, labels))
        except ValidationError as error:
            raise ValueError(f"{where}: {describe_problems(error.errors())}") from None
        except InvalidInputError as error:
            raise ValueError(f"{where}: {error}") from None
    return grants


class GatewaySettings(PlatformSettings):
    """Gateway settings (env prefix RAG_): the platform's, plus the API keys and
    the tenant of unauthenticated requests."""

    # The API keys are secrets: a validation error must not echo the value.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    gateway_api_keys: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "API keys and whom each acts for, JSON: "
            '`{"<key>": {"tenant": "acme", "access_labels": ["hr"]}}` (access_labels optional). '
            "A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`; every /v1 "
            "call acts for its key's tenant and labels. Empty disables authentication "
            "(embedded default); a malformed value stops the gateway at startup."
        ),
    )
    gateway_access_log: Literal["errors", "all", "off"] = Field(
        default="errors",
        description=(
            "Which requests get a log line: errors (status 400 and up; every request is "
            "counted in rag_http_requests_total and traced, and the load balancer logs "
            "them all), all (uvicorn's access log, a line for every request at a CPU cost "
            "each, see docs/benchmarks.md), or off."
        ),
    )
    gateway_max_upload_bytes: int = Field(
        default=51 * 1024 * 1024,
        ge=1,
        description=(
            "Largest upload body accepted (POST /v1/documents, multipart); larger is 413 "
            "before it is read. Keep it just above RAG_INGESTION_MAX_DOCUMENT_BYTES."
        ),
    )
    gateway_max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest body of any other request (JSON); larger is 413 before it is read.",
    )
    gateway_max_concurrent_requests: int = Field(
        default=256,
        ge=0,
        description=(
            "HTTP requests one gateway process serves at once (a streamed answer until its "
            "end; /healthz and /readyz aside); more are 503 with Retry-After at once instead "
            "of queueing without bound; 0: no cap."
        ),
    )
    gateway_rate_limit_backend: Literal["memory", "redis"] = Field(
        default="memory",
        description=(
            "Where the rate limits' token buckets live: memory (each replica limits on its "
            "own) or redis (shared by every replica, RAG_REDIS_*; while Redis fails each "
            "replica limits on its own)."
        ),
    )
    gateway_ask_rate_per_key: float = Field(
        default=20.0,
        ge=0,
        description=(
            "Asks (POST /v1/ask, /v1/ask/stream) per second one API key may make; more are "
            "429 with Retry-After; 0: no per-key limit."
        ),
    )
    gateway_ask_burst_per_key: int = Field(
        default=40, ge=1, description="Asks one API key may make at once after a quiet spell."
    )
    gateway_ask_rate_per_tenant: float = Field(
        default=100.0,
        ge=0,
        description=(
            "Asks per second all of one tenant's keys together may make (with authentication "
            "off: every client); 0: no per-tenant limit."
        ),
    )
    gateway_ask_burst_per_tenant: int = Field(
        default=200, ge=1, description="Asks one tenant may make at once after a quiet spell."
    )
    gateway_upload_rate_per_key: float = Field(
        default=5.0,
        ge=0,
        description="Uploads (POST /v1/documents) per second per API key; 0: no limit.",
    )
    gateway_upload_burst_per_key: int = Field(
        default=20, ge=1, description="Uploads one API key may make at once."
    )
    gateway_upload_rate_per_tenant: float = Field(
        default=20.0, ge=0, description="Uploads per second per tenant; 0: no limit."
    )
    gateway_upload_burst_per_tenant: int = Field(
        default=50, ge=1, description="Uploads one tenant may make at once."
    )
    gateway_write_rate_per_key: float = Field(
        default=10.0,
        ge=0,
        description="Document writes (DELETE /v1/documents/...) per second per key; 0: no limit.",
    )
    gateway_write_burst_per_key: int = Field(
        default=50, ge=1, description="Document writes one API key may make at once."
    )
    gateway_write_rate_per_tenant: float = Field(
        default=50.0, ge=0, description="Document writes per second per tenant; 0: no limit."
    )
    gateway_write_burst_per_tenant: int = Field(
        default=100, ge=1, description="Document writes one tenant may make at once."
    )
    gateway_default_tenant: str = Field(
        default=DEFAULT_TENANT,
        description=(
            "Tenant every /v1 call acts for while RAG_GATEWAY_API_KEYS is empty "
            "(authentication off), with no access labels."
        ),
    )

    @field_validator("gateway_api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())  # fail at startup, not at the first call
        return value

    @field_validator("gateway_default_tenant")
    @classmethod
    def _check_default_tenant(cls, value: str) -> str:
        try:
            return validate_tenant(value)
        except InvalidInputError as error:
            raise ValueError(str(error)) from None

    def api_keys(self) -> dict[str, Caller]:
        """The caller each configured key acts as."""
        return parse_api_keys(self.gateway_api_keys.get_secret_value())

    def default_caller(self) -> Caller:
        """Whom a call acts for when authentication is off."""
        return Caller(self.gateway_default_tenant)

    def rate_limits(self) -> dict[RouteClass, ClassLimits]:
        """The buckets of each route class, from RAG_GATEWAY_<CLASS>_{RATE,BURST}_PER_*."""
        return {
            route_class: ClassLimits(
                per_key=self._rate(route_class, "key"),
                per_tenant=self._rate(route_class, "tenant"),
            )
            for route_class in ROUTE_CLASSES
        }

    def _rate(self, route_class: RouteClass, per: str) -> Rate | None:
        name = f"gateway_{route_class}_rate_per_{per}"
        per_second: float = getattr(self, name)
        if not per_second:
            return None
        burst: int = getattr(self, f"gateway_{route_class}_burst_per_{per}")
        return Rate(per_second, burst, f"RAG_{name.upper()}")
