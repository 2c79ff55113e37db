"""Print the configuration reference (every RAG_* variable) as a Markdown table.

The README's table is this script's output; a test fails when they drift, so the
documented configuration is always the configuration the code reads.
"""

import importlib
import re
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from services.runtime.settings import PlatformSettings

# (label, module, settings class) for each process; fields inherited from
# PlatformSettings are listed once, under "all services".
SETTINGS_CLASSES = [
    ("all services", "services.runtime.settings", "PlatformSettings"),
    ("embedding", "services.embedding.__main__", "EmbeddingSettings"),
    ("retrieval", "services.retrieval.__main__", "RetrievalSettings"),
    ("generation", "services.generation.__main__", "GenerationSettings"),
    ("ingestion", "services.ingestion.__main__", "IngestionSettings"),
    ("query", "services.query.__main__", "QuerySettings"),
    ("local LLM", "services.llm.settings", "LlmSettings"),
    ("gateway", "services.gateway.settings", "GatewaySettings"),
    ("ragctl", "services.cli.ragctl", "CliSettings"),
]


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, used by, default, description) for every setting."""
    shared = set(PlatformSettings.model_fields)
    table = []
    for label, module, name in SETTINGS_CLASSES:
        cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
        for field_name, field in cls.model_fields.items():
            if label != "all services" and field_name in shared:
                continue
            default = field.get_default(call_default_factory=True)
            shown = "" if default is None else str(default)
            table.append(
                (f"RAG_{field_name.upper()}", label, shown, (field.description or "").strip())
            )
    return table


def markdown() -> str:
    """The reference table."""
    lines = ["| variable | used by | default | meaning |", "|---|---|---|---|"]
    for variable, used_by, default, description in rows():
        lines.append(f"| `{variable}` | {used_by} | `{default}` | {description} |")
    return "\n".join(lines)


START, END = "<!-- config:start -->", "<!-- config:end -->"


def with_reference(readme: str) -> str:
    """`readme` with the table between its config markers replaced by the current one."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"the README has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{markdown()}\n{END}", readme)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        path = Path(sys.argv[2])
        path.write_text(with_reference(path.read_text()))
    else:
        print(markdown())
