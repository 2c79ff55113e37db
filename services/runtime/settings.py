"""Configuration from environment variables (prefix ``RAG_``), one place for all.

Every service reads the same ``PlatformSettings`` so that addresses, deadlines
and limits agree across processes; a service adds its own fields by subclassing.
In production the Helm chart sets the same variables.
"""

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES = ("embedding", "retrieval", "generation", "ingestion", "query")


class PlatformSettings(BaseSettings):
    """Settings every process shares."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="RAG_", extra="ignore"
    )

    data_dir: Path = Field(
        default=Path(".ragdata"), description="Where services keep state (index, logs, pids)."
    )
    log_level: str = Field(default="INFO", description="Python log level name.")
    log_content: bool = Field(
        default=False,
        description="Allow document text and questions in logs (debugging only).",
    )
    listen_host: str = Field(
        default="127.0.0.1", description="Interface the servers bind to (0.0.0.0 in a pod)."
    )
    query_addr: str = Field(default="127.0.0.1:50051", description="QueryService address.")
    ingestion_addr: str = Field(default="127.0.0.1:50052", description="IngestionService address.")
    embedding_addr: str = Field(default="127.0.0.1:50053", description="EmbeddingService address.")
    embedding_addrs: str = Field(
        default="",
        description=(
            "Other EmbeddingService addresses, comma-separated, one per model: query and "
            "ingestion embed with the one whose model the index serves, so they follow a "
            "re-index to another model (`ragctl reindex`) without a restart."
        ),
    )
    retrieval_addr: str = Field(default="127.0.0.1:50054", description="RetrievalService address.")
    generation_addr: str = Field(
        default="127.0.0.1:50055", description="GenerationService address."
    )
    gateway_port: int = Field(default=8080, description="REST gateway port.")
    rpc_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Deadline applied to every outgoing gRPC call."
    )
    max_concurrent_rpcs: int = Field(
        default=256,
        ge=0,
        description=(
            "Calls one service process runs at once (health checks aside); more are "
            "refused at once with RESOURCE_EXHAUSTED instead of queueing without bound; "
            "0: no cap."
        ),
    )
    startup_check_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long query and ingestion wait at start-up for the embedding and retrieval "
            "services, to refuse to serve when the embedder is not the index's; 0: no check."
        ),
    )
    tls_cert_file: str = Field(
        default="",
        description=(
            "This process's TLS certificate (PEM); with RAG_TLS_KEY_FILE and RAG_TLS_CA_FILE, "
            "gRPC is mutual TLS and the certificate's common name is the process's identity "
            '(docs/security.md). "{process}" in the path is replaced by the process name. '
            "Empty: plaintext, every caller trusted (loopback only)."
        ),
    )
    tls_key_file: str = Field(default="", description="Private key of RAG_TLS_CERT_FILE (PEM).")
    tls_ca_file: str = Field(
        default="", description="CA certificate (PEM) that every peer's certificate chains to."
    )
    health_port_offset: int = Field(
        default=2000,
        ge=1,
        description=(
            "With TLS, each server also answers health checks, and nothing else, in "
            "plaintext on its port plus this (for Kubernetes probes and `ragctl status`)."
        ),
    )
    grpc_clients: str = Field(
        default="",
        description=(
            'JSON: internal gRPC clients by certificate common name, {"name": {"tenant": '
            '"acme", "access_labels": ["hr"]}}: each acts for that tenant and those labels '
            "only, as an API key does at the gateway (with TLS)."
        ),
    )
    drain_seconds: float = Field(
        default=10.0, ge=0, description="Grace period for in-flight calls on SIGTERM."
    )
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024, description="Largest gRPC message sent or received."
    )
    metrics_enabled: bool = Field(
        default=True,
        description="Serve Prometheus /metrics and count and time every request.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "/metrics port of this process, for one process per network (a pod); "
            "0 = its serving port + RAG_METRICS_PORT_OFFSET."
        ),
    )
    metrics_port_offset: int = Field(
        default=1000,
        ge=1,
        description=(
            "When RAG_METRICS_PORT is 0, each process serves /metrics on its own port plus "
            "this (query 50051 -> 51051, gateway 8080 -> 9080), so that platforms on one "
            "host with distinct ports never collide."
        ),
    )

    cache_backend: Literal["memory", "redis"] = Field(
        default="memory",
        description=(
            "Where caches live: memory (an LRU in each process, nothing to run) or redis "
            "(shared by every replica; RAG_REDIS_*). A cache that fails is skipped, never fatal."
        ),
    )
    cache_max_entries: int = Field(
        default=10_000,
        ge=1,
        description="Entries each in-process cache holds (memory backend); LRU eviction.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description=(
            "Redis for RAG_CACHE_BACKEND=redis and the gateway's "
            "RAG_GATEWAY_RATE_LIMIT_BACKEND=redis; rediss:// for TLS."
        ),
    )
    redis_password: SecretStr = Field(
        default=SecretStr(""), description="Redis AUTH password; empty: none."
    )
    redis_ca_cert: Path | None = Field(
        default=None,
        description="CA certificate (PEM) that signed the Redis server's TLS certificate.",
    )
    redis_timeout_seconds: float = Field(
        default=0.25,
        gt=0,
        description=(
            "Connect and read timeout of each Redis call: past it the call is a miss, "
            "so a slow cache cannot slow requests down by more."
        ),
    )

    def other_embedding_addresses(self) -> list[str]:
        """RAG_EMBEDDING_ADDRS as a list."""
        return [address.strip() for address in self.embedding_addrs.split(",") if address.strip()]

    def address_of(self, service: str) -> str:
        """The address clients dial for `service` (one of SERVICE_NAMES)."""
        if service not in SERVICE_NAMES:
            raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICE_NAMES)}")
        return str(getattr(self, f"{service}_addr"))

    def metrics_port_of(self, process: str) -> int:
        """The /metrics port of `process` (one of SERVICE_NAMES or "gateway")."""
        if self.metrics_port:
            return self.metrics_port
        serving = (
            self.gateway_port
            if process == "gateway"
            else int(self.address_of(process).rsplit(":", 1)[1])
        )
        port = serving + self.metrics_port_offset
        if port > 65535:
            raise ValueError(
                f"{process}: metrics port {port} (port {serving} + RAG_METRICS_PORT_OFFSET) "
                "is over 65535; set RAG_METRICS_PORT or a smaller offset"
            )
        return port

    def listen_address_of(self, service: str) -> str:
        """The address `service` binds: its port on `listen_host`."""
        port = self.address_of(service).rsplit(":", 1)[1]
        return f"{self.listen_host}:{port}"


class GoogleCloudSettings(PlatformSettings):
    """Settings of the services that call Google Cloud APIs (Vertex AI embeddings,
    Vector Search, Firestore): one project and region for all of them."""

    gcp_project: str = Field(
        default="",
        description="Google Cloud project of Vertex AI and Firestore (backends vertex).",
    )
    gcp_location: str = Field(
        default="us-central1", description="Vertex AI region (backends vertex)."
    )


class FirestoreSettings(GoogleCloudSettings):
    """Settings of the services that keep state in Firestore: retrieval (the
    Vector Search store's side store) and ingestion (import jobs)."""

    firestore_database: str = Field(
        default="(default)",
        description=(
            "Firestore database of the Vector Search store's chunk text and registry, and of "
            "ingestion's import jobs (RAG_INGESTION_JOB_STORE=firestore)."
        ),
    )
    firestore_collection_prefix: str = Field(
        default="rag", description="Prefix of the platform's Firestore collections."
    )
