"""The local LLM without a model: packaged-model assembly and verification, its
settings, and how the supervisor adds it to a platform (services/llm,
services/cli/supervisor.py). tests/integration/test_local_llm.py runs the model."""

import hashlib
import json
import tomllib
from pathlib import Path

import pytest

from services.cli import supervisor
from services.cli.supervisor import ALL, KNOWN, LLM, Platform, address_of, metrics_url
from services.common.errors import FailedPreconditionError
from services.llm import models
from services.llm.models import MODELS, ModelSpec, assemble, ensure_model, model_path
from services.llm.settings import LlmSettings

REPO = Path(__file__).resolve().parents[2]
PARTS = [b"GGUF first part ", b"second part ", b"last"]
WHOLE = b"".join(PARTS)


def spec(digest: str = hashlib.sha256(WHOLE).hexdigest(), size: int = len(WHOLE)) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        description="a test model",
        part_prefix="tiny-part",
        parts=len(PARTS),
        version="1.0",
        size=size,
        sha256=digest,
        extra="local-llm",
    )


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The parts as files, standing in for the installed part packages."""
    files = []
    for number, data in enumerate(PARTS, start=1):
        path = tmp_path / "site" / f"part{number:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        files.append(path)
    monkeypatch.setattr(models, "part_files", lambda _: files)
    return files


def test_parts_are_joined_in_order_and_verified(tmp_path: Path, parts: list[Path]) -> None:
    path = assemble(spec(), tmp_path / "models")
    assert path == model_path(spec(), tmp_path / "models")
    assert path.read_bytes() == WHOLE
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"], "no partial file left"


@pytest.mark.parametrize(
    "wrong",
    [spec(digest="0" * 64), spec(size=len(WHOLE) + 1)],
    ids=["sha256", "size"],
)
def test_a_mismatch_is_refused_and_leaves_no_file(
    tmp_path: Path, parts: list[Path], wrong: ModelSpec
) -> None:
    with pytest.raises(FailedPreconditionError, match="refusing to serve them"):
        assemble(wrong, tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_ensure_model_reuses_a_file_of_the_right_size(tmp_path: Path, parts: list[Path]) -> None:
    first = ensure_model(spec(), tmp_path / "models")
    parts[0].write_bytes(b"changed")  # would fail verification if joined again
    assert ensure_model(spec(), tmp_path / "models") == first


def test_missing_parts_name_the_extra_that_installs_them(tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError) as raised:
        assemble(spec(), tmp_path)
    assert "tiny-part1 is not installed" in str(raised.value)
    assert "make setup-llm" in str(raised.value) and ".[local-llm]" in str(raised.value)


def test_pyproject_extras_pin_exactly_each_models_parts() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for model in MODELS.values():
        server = [r for r in extras[model.extra] if r.startswith("xllamacpp==")]
        assert len(server) == 1, "llama.cpp's server, pinned"
        assert sorted(set(extras[model.extra]) - set(server)) == sorted(model.requirements())


def test_settings_reject_a_model_that_is_not_packaged() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        LlmSettings(llm_model="llama-70b")


def test_generation_env_makes_the_server_the_simple_tier() -> None:
    settings = LlmSettings(llm_port=52999, llm_deadline_seconds=60, rpc_timeout_seconds=30)
    env = settings.generation_env()
    assert env["RAG_GENERATION_SIMPLE_CHAIN"] == "vllm,extractive"
    assert env["RAG_GENERATION_COMPLEX_CHAIN"] == "extractive"
    assert env["RAG_VLLM_BASE_URL"] == "http://127.0.0.1:52999/v1"
    assert env["RAG_VLLM_MODEL"] == settings.llm_model
    assert json.loads(env["RAG_GENERATION_BACKEND_DEADLINES"]) == {"vllm": 60}
    assert float(env["RAG_RPC_TIMEOUT_SECONDS"]) > 60, "callers wait longer than the model"


def test_the_llm_is_started_only_when_asked(tmp_path: Path) -> None:
    assert LLM not in ALL
    assert (LLM, *ALL) == KNOWN
    assert Platform(tmp_path).services == ALL
    assert Platform(tmp_path, services=[*ALL, LLM]).services == KNOWN
    assert LLM in supervisor.STAGES[0], "started with the first stage: nothing calls it earlier"


def test_asking_for_the_llm_configures_generation_unless_set_explicitly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_VLLM_MODEL", "mine")
    platform = Platform(
        tmp_path,
        env={"RAG_LLM_PORT": "52998", "RAG_GENERATION_COMPLEX_CHAIN": "extractive,vllm"},
        services=[*ALL, LLM],
    )
    assert platform.env["RAG_GENERATION_SIMPLE_CHAIN"] == "vllm,extractive"
    assert platform.env["RAG_VLLM_BASE_URL"] == "http://127.0.0.1:52998/v1"
    assert platform.env["RAG_GENERATION_COMPLEX_CHAIN"] == "extractive,vllm"
    assert platform.env["RAG_VLLM_MODEL"] == "mine"
    assert platform.settings.rpc_timeout_seconds > platform.settings.llm_deadline_seconds
    assert "RAG_GENERATION_SIMPLE_CHAIN" not in Platform(tmp_path).env


def test_the_llm_is_addressed_and_probed_over_http(tmp_path: Path) -> None:
    platform = Platform(tmp_path, env={"RAG_LLM_PORT": "1"}, services=[*ALL, LLM])
    assert address_of(platform.settings, LLM) == "http://127.0.0.1:1"
    assert metrics_url(platform.settings, LLM) == "http://127.0.0.1:1/metrics"
    assert supervisor.HealthProbe(platform.settings).check(LLM) == supervisor.UNREACHABLE
