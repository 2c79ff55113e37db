"""Run the generation service: `python -m services.generation`.

Configuration decides everything a deployment varies: which backends form
each tier's fallback chain, the router's thresholds, A/B arms, prices,
deadlines and breakers. The embedded default answers both tiers with the
extractive backend (no model, no key, no cost); the router still runs and
records its decision, so routing can be observed before any LLM is wired in.
A production chain looks like ``RAG_GENERATION_SIMPLE_CHAIN=vllm,gemini-flash,extractive``
and ``RAG_GENERATION_COMPLEX_CHAIN=gemini-pro,vllm,extractive``.
"""

from typing import Literal, get_args

import google.oauth2.credentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ragplatform.v1 import generation_pb2, generation_pb2_grpc
from services.generation.backends import AnswerGenerator
from services.generation.engine import Arm, Backend, GenerationEngine
from services.generation.extractive import ExtractiveAnswerer
from services.generation.grounding import GroundingChecker, LexicalGroundingChecker
from services.generation.llm import LlmAnswerer
from services.generation.prompts import PromptBudget
from services.generation.resilience import CircuitBreaker
from services.generation.router import (
    COMPLEX,
    DEFAULT_MIN_TOP_SCORE,
    DEFAULT_THRESHOLD,
    SIMPLE,
    Router,
)
from services.generation.servicer import GenerationServicer
from services.runtime.costs import Price, PriceTable
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings

BackendName = Literal["extractive", "vllm", "gemini-pro", "gemini-flash"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
EXTRACTIVE, VLLM, GEMINI_PRO, GEMINI_FLASH = BACKEND_NAMES

DEFAULT_PRICES = {
    "gemini-2.5-pro": {"input": 1.25, "output": 10.0},
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50},
}
"""Vertex AI list prices (USD per 1M tokens, prompts up to 200k tokens) when this
was written; check them against your contract. A self-hosted vLLM model has no
list price: add its amortised GPU cost per token under its model name."""


class ArmSetting(BaseModel):
    """One A/B arm as configured."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    backend: BackendName
    weight: int = Field(gt=0)


class GenerationSettings(PlatformSettings):
    """Generation service settings (env prefix RAG_)."""

    generation_simple_chain: str = Field(
        default=EXTRACTIVE,
        description=(
            "Backends tried in order for simple questions, comma-separated: extractive, "
            "vllm, gemini-pro, gemini-flash."
        ),
    )
    generation_complex_chain: str = Field(
        default=EXTRACTIVE, description="Backends tried in order for complex questions."
    )
    generation_router_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        gt=0,
        lt=1,
        description="Router score at or above which a question goes to the complex tier.",
    )
    generation_router_min_top_score: float = Field(
        default=DEFAULT_MIN_TOP_SCORE,
        description="Best retrieval score below which the router escalates (low confidence).",
    )
    generation_grounding_checker: Literal["lexical", "vertex"] = Field(
        default="lexical",
        description="Grounding check: local content-word support, or Vertex AI check-grounding.",
    )
    generation_grounding_threshold: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="A simple-tier answer grounded below this is rewritten by the complex tier.",
    )
    generation_temperature: float = Field(
        default=0.0, ge=0, le=2, description="Sampling temperature of LLM backends."
    )
    generation_max_output_tokens: int = Field(
        default=1024, gt=0, description="Most tokens an LLM answer may have."
    )
    generation_deadline_seconds: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Deadline of one backend call (whole answer); below RAG_RPC_TIMEOUT_SECONDS, so "
            "a fallback still has time when a backend hangs."
        ),
    )
    generation_backend_deadlines: dict[str, float] = Field(
        default={},
        description='Per-backend deadline overrides in seconds, JSON: {"vllm": 15}.',
    )
    generation_breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failures that open a backend's circuit breaker."
    )
    generation_breaker_reset_seconds: float = Field(
        default=30.0, gt=0, description="How long a breaker stays open before one trial call."
    )
    generation_ab_arms: dict[Literal["simple", "complex"], list[ArmSetting]] = Field(
        default={},
        description=(
            'A/B arms per tier, JSON: {"complex": [{"name": "pro", "backend": "gemini-pro", '
            '"weight": 50}, {"name": "flash", "backend": "gemini-flash", "weight": 50}]}.'
        ),
    )
    generation_prices: dict[str, Price] = Field(
        default=DEFAULT_PRICES,
        validate_default=True,
        description=(
            'USD per 1M tokens per model, JSON: {"gemini-2.5-pro": {"input": 1.25, '
            '"output": 10.0}}; models without a price cost 0.'
        ),
    )
    vllm_base_url: str = Field(
        default="http://127.0.0.1:8000/v1", description="vLLM's OpenAI-compatible API."
    )
    vllm_api_key: SecretStr = Field(
        default=SecretStr("EMPTY"), description="API key vLLM was started with (--api-key)."
    )
    vllm_model: str = Field(
        default="meta-llama/Llama-3.1-8B-Instruct", description="Model name vLLM serves."
    )
    vllm_context_tokens: int = Field(
        default=8192, gt=0, description="vLLM's --max-model-len: prompt plus answer tokens."
    )
    gemini_project: str = Field(
        default="", description="Google Cloud project for Gemini on Vertex AI."
    )
    gemini_location: str = Field(default="us-central1", description="Vertex AI region.")
    gemini_pro_model: str = Field(default="gemini-2.5-pro", description="The strong model.")
    gemini_flash_model: str = Field(default="gemini-2.5-flash", description="The fast model.")
    gemini_context_tokens: int = Field(
        default=32768,
        gt=0,
        description="Token budget of a Gemini prompt plus answer (bounds cost).",
    )
    gemini_thinking_budget: int = Field(
        default=256, ge=0, description="Most thinking tokens per Gemini answer (billed as output)."
    )
    gemini_base_url: str = Field(
        default="", description="Override of the Vertex AI endpoint (a proxy or a test fake)."
    )
    gemini_access_token: SecretStr = Field(
        default=SecretStr(""),
        description="Static OAuth token for Vertex AI; empty uses Application Default Credentials.",
    )
    grounding_vertex_endpoint: str = Field(
        default="",
        description="Override of the Discovery Engine endpoint for check-grounding (tests).",
    )

    @field_validator("generation_simple_chain", "generation_complex_chain")
    @classmethod
    def _known_backends(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in BACKEND_NAMES]
        if not names or unknown:
            raise ValueError(f"chain {value!r} must list backends among {', '.join(BACKEND_NAMES)}")
        return ",".join(names)

    def chain(self, tier: str) -> list[str]:
        """The backend names of `tier`'s chain, in order."""
        value = self.generation_simple_chain if tier == SIMPLE else self.generation_complex_chain
        return value.split(",")

    def used_backends(self) -> set[str]:
        """Backends that some chain or arm names: only these are built."""
        used = set(self.chain(SIMPLE)) | set(self.chain(COMPLEX))
        used.update(arm.backend for arms in self.generation_ab_arms.values() for arm in arms)
        return used

    def deadline(self, backend: str) -> float:
        return self.generation_backend_deadlines.get(backend, self.generation_deadline_seconds)


def _gemini_credentials(
    settings: GenerationSettings,
) -> google.oauth2.credentials.Credentials | None:
    token = settings.gemini_access_token.get_secret_value()
    return google.oauth2.credentials.Credentials(token=token) if token else None  # type: ignore[no-untyped-call]


def build_generator(settings: GenerationSettings, name: str) -> AnswerGenerator:
    """The backend called `name` (one of BACKEND_NAMES), configured from `settings`."""
    # The SDKs load in about a second each: only when a chain uses them.
    if name == EXTRACTIVE:
        return ExtractiveAnswerer()
    if name == VLLM:
        from services.generation.vllm import VllmChat

        chat = VllmChat(
            name=name,
            base_url=settings.vllm_base_url,
            api_key=settings.vllm_api_key.get_secret_value(),
            model=settings.vllm_model,
            temperature=settings.generation_temperature,
            max_output_tokens=settings.generation_max_output_tokens,
            timeout_seconds=settings.deadline(name),
        )
        budget = PromptBudget(settings.vllm_context_tokens, settings.generation_max_output_tokens)
        return LlmAnswerer(name, chat, budget)
    if not settings.gemini_project:
        raise ValueError(f"backend {name} needs RAG_GEMINI_PROJECT (a Google Cloud project)")
    from services.generation.gemini import GeminiChat

    gemini = GeminiChat(
        name=name,
        model=settings.gemini_pro_model if name == GEMINI_PRO else settings.gemini_flash_model,
        project=settings.gemini_project,
        location=settings.gemini_location,
        temperature=settings.generation_temperature,
        max_output_tokens=settings.generation_max_output_tokens,
        thinking_budget=settings.gemini_thinking_budget,
        timeout_seconds=settings.deadline(name),
        base_url=settings.gemini_base_url,
        credentials=_gemini_credentials(settings),
    )
    budget = PromptBudget(settings.gemini_context_tokens, settings.generation_max_output_tokens)
    return LlmAnswerer(name, gemini, budget)


def build_checker(settings: GenerationSettings) -> GroundingChecker:
    """The configured grounding checker."""
    if settings.generation_grounding_checker == "lexical":
        return LexicalGroundingChecker()
    from services.generation.vertex_grounding import VertexGroundingChecker

    if not settings.gemini_project:
        raise ValueError("the vertex grounding checker needs RAG_GEMINI_PROJECT")
    return VertexGroundingChecker(
        project=settings.gemini_project,
        endpoint=settings.grounding_vertex_endpoint,
        credentials=_gemini_credentials(settings),
        timeout_seconds=settings.generation_deadline_seconds,
    )


def build_engine(settings: GenerationSettings) -> GenerationEngine:
    """The engine with every backend some chain or arm uses."""
    backends = {
        name: Backend(
            build_generator(settings, name),
            settings.deadline(name),
            CircuitBreaker(
                name,
                settings.generation_breaker_failures,
                settings.generation_breaker_reset_seconds,
            ),
        )
        for name in sorted(settings.used_backends())
    }
    return GenerationEngine(
        router=Router(
            settings.generation_router_threshold, settings.generation_router_min_top_score
        ),
        backends=backends,
        chains={tier: settings.chain(tier) for tier in (SIMPLE, COMPLEX)},
        arms={
            tier: [Arm(a.name, a.backend, a.weight) for a in arms]
            for tier, arms in settings.generation_ab_arms.items()
        },
        checker=build_checker(settings),
        grounding_threshold=settings.generation_grounding_threshold,
        prices=PriceTable(settings.generation_prices),
    )


def main() -> None:
    settings = GenerationSettings()

    async def build() -> Service:
        binding = ServiceBinding(
            generation_pb2_grpc.add_GenerationServiceServicer_to_server,
            GenerationServicer(build_engine(settings)),
            generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
        )
        return Service([binding])

    run("generation", settings, build)


if __name__ == "__main__":
    main()
