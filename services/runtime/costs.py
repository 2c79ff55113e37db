"""Token prices per model, and what a model call cost.

Why configuration: prices differ per model, per contract and over time, and a
self-hosted model (Llama on our own vLLM) has no list price at all, only an
amortised GPU cost that each deployment works out for itself. Each service
reads its table from a setting (``RAG_GENERATION_PRICES`` for chat models,
``RAG_EMBEDDING_PRICES`` for embedders: USD per million tokens, per model
name) and meters the cost of every call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

TOKENS_PER_PRICE_UNIT = 1_000_000


class InputPrice(BaseModel):
    """USD per million input tokens: the price of a model that only reads (an embedder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per 1M input (prompt) tokens.")

    def usd(self, input_tokens: int, output_tokens: int) -> float:
        """USD for the tokens; a model that only reads has no output to bill."""
        return input_tokens * self.input / TOKENS_PER_PRICE_UNIT


class Price(InputPrice):
    """USD per million tokens in and out, as providers quote them for chat models."""

    output: float = Field(ge=0, description="USD per 1M output tokens (thinking included).")

    def usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / TOKENS_PER_PRICE_UNIT


@dataclass
class PriceTable:
    """Prices by model name; a model without a price costs 0 and is logged once,
    naming the `setting` that would price it."""

    prices: Mapping[str, InputPrice]
    setting: str = "RAG_GENERATION_PRICES"

    def __post_init__(self) -> None:
        self._warned: set[str] = set()

    def cost(self, model: str, input_tokens: int, output_tokens: int = 0) -> float:
        """USD for `input_tokens` and `output_tokens` of `model`."""
        price = self.prices.get(model)
        if price is None:
            if (input_tokens or output_tokens) and model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price configured for model; its calls cost 0",
                    extra={"model": model, "setting": self.setting},
                )
            return 0.0
        return price.usd(input_tokens, output_tokens)
