"""Token prices per model, and what an answer cost.

Why configuration: prices differ per model, per contract and over time, and a
self-hosted model (Llama on our own vLLM) has no list price at all, only an
amortised GPU cost that each deployment works out for itself. The service
reads them from ``RAG_GENERATION_PRICES`` (USD per million input and output
tokens, per model name) and puts the cost on every answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

TOKENS_PER_PRICE_UNIT = 1_000_000


class Price(BaseModel):
    """USD per million tokens, as providers quote them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per 1M input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per 1M output tokens (thinking included).")


@dataclass
class PriceTable:
    """Prices by model name; a model without a price costs 0 and is logged once."""

    prices: Mapping[str, Price]

    def __post_init__(self) -> None:
        self._warned: set[str] = set()

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD for `input_tokens` and `output_tokens` of `model`."""
        price = self.prices.get(model)
        if price is None:
            if (input_tokens or output_tokens) and model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price configured for model; its answers cost 0",
                    extra={"model": model, "setting": "RAG_GENERATION_PRICES"},
                )
            return 0.0
        return (input_tokens * price.input + output_tokens * price.output) / TOKENS_PER_PRICE_UNIT
