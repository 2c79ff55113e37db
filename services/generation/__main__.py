"""Run the generation service: `python -m services.generation`."""

from typing import Literal

from pydantic import Field

from ragplatform.v1 import generation_pb2, generation_pb2_grpc
from services.generation.backends import AnswerGenerator
from services.generation.extractive import ExtractiveAnswerer
from services.generation.servicer import GenerationServicer
from services.runtime.server import Service, ServiceBinding, run
from services.runtime.settings import PlatformSettings


class GenerationSettings(PlatformSettings):
    """Generation service settings (env prefix RAG_)."""

    generation_backend: Literal["extractive"] = Field(
        default="extractive",
        description="Answer generator: the extractive grounded answerer (no LLM).",
    )


def build_generator(settings: GenerationSettings) -> AnswerGenerator:
    """The configured answer generator."""
    return ExtractiveAnswerer()


def main() -> None:
    settings = GenerationSettings()

    async def build() -> Service:
        binding = ServiceBinding(
            generation_pb2_grpc.add_GenerationServiceServicer_to_server,
            GenerationServicer(build_generator(settings)),
            generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
        )
        return Service([binding])

    run("generation", settings, build)


if __name__ == "__main__":
    main()
