"""Configuration from environment variables (prefix ``RAG_``), one place for all.

Every service reads the same ``PlatformSettings`` so that addresses, deadlines
and limits agree across processes; a service adds its own fields by subclassing.
In production the Helm chart sets the same variables.
"""

from pathlib import Path
from typing import ClassVar

from pydantic import Field
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
    retrieval_addr: str = Field(default="127.0.0.1:50054", description="RetrievalService address.")
    generation_addr: str = Field(
        default="127.0.0.1:50055", description="GenerationService address."
    )
    gateway_port: int = Field(default=8080, description="REST gateway port.")
    rpc_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Deadline applied to every outgoing gRPC call."
    )
    drain_seconds: float = Field(
        default=10.0, ge=0, description="Grace period for in-flight calls on SIGTERM."
    )
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024, description="Largest gRPC message sent or received."
    )

    def address_of(self, service: str) -> str:
        """The address clients dial for `service` (one of SERVICE_NAMES)."""
        if service not in SERVICE_NAMES:
            raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICE_NAMES)}")
        return str(getattr(self, f"{service}_addr"))

    def listen_address_of(self, service: str) -> str:
        """The address `service` binds: its port on `listen_host`."""
        port = self.address_of(service).rsplit(":", 1)[1]
        return f"{self.listen_host}:{port}"
