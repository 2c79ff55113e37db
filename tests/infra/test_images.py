"""The images, checked without a Docker engine: the Dockerfiles are parsed and linted
(hadolint), their requirement files are compared with what the copied sources
import, and the copied sources are imported from a copy laid out like the image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.infra.conftest import CHART, PLATFORM_SERVICES, PORTS, REPO, Tools, load_yaml, run
from tests.infra.dockerfiles import (
    Dockerfile,
    Stage,
    closure,
    parse,
    requirement_lines,
    third_party_imports,
)

DOCKER = REPO / "docker"
# The final stages (targets) of each Dockerfile; the first listed is the default.
TARGETS = {s: ["runtime"] for s in PLATFORM_SERVICES}
TARGETS["embedding"] = ["local-model", "remote"]
APP_UID = 10001


def dockerfile(service: str) -> Dockerfile:
    return parse(DOCKER / service / "Dockerfile")


def final_stages(service: str) -> list[Stage]:
    df = dockerfile(service)
    return [df.stage(t) for t in TARGETS[service]]


def copied_sources(stage: Stage) -> list[str]:
    """Repository paths a stage COPYs from the build context."""
    sources = []
    for i in stage.all("COPY"):
        if i.args.startswith("--from="):
            continue
        sources.extend(i.args.split()[:-1])
    return sources


def requirements_of(service: str, target: str) -> set[str]:
    files = [DOCKER / "runtime-requirements.txt", DOCKER / service / "requirements.txt"]
    if target == "local-model":
        files.append(DOCKER / service / "requirements-local-model.txt")
    names = {canonicalize_name(r.name) for f in files for r in requirement_lines(f)}
    if target == "local-model":
        names.add("torch")  # installed from the PyTorch CPU index
    return names


def source_files(service: str) -> list[Path]:
    files = [REPO / "services" / "__init__.py"]
    for package in ("common", "runtime", service):
        files.extend(sorted((REPO / "services" / package).rglob("*.py")))
    return files


@pytest.mark.parametrize("service", PLATFORM_SERVICES)
def test_multi_stage_slim_and_pinned(service: str) -> None:
    df = dockerfile(service)
    assert len(df.stages) >= 3, "protos, deps and a runtime stage"
    for name in ("PYTHON_VERSION", "DEBIAN_RELEASE"):
        assert re.fullmatch(r"[0-9a-z.]+", df.global_args.get(name, "")), (
            f"ARG {name} needs a default"
        )
    assert re.fullmatch(r"3\.11\.[0-9]+", df.global_args["PYTHON_VERSION"]), "pinned patch release"
    for stage in df.stages:
        if stage.base in {s.name for s in df.stages}:
            continue  # built on an earlier stage
        assert stage.base == "python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}", stage.base
        assert "latest" not in stage.base
    assert not any(s.all("HEALTHCHECK") for s in df.stages), "Kubernetes probes, no HEALTHCHECK"
    text = df.path.read_text()
    assert "pip install" in text and "-c /tmp/req/constraints.txt" in text, (
        "versions from pyproject"
    )


@pytest.mark.parametrize("service", PLATFORM_SERVICES)
def test_final_stages_run_the_service_unprivileged(service: str) -> None:
    chart = load_yaml(CHART / "values.yaml")
    assert chart["podSecurityContext"]["runAsUser"] == APP_UID
    for stage in final_stages(service):
        users = stage.all("USER")
        assert users and users[-1].args == f"{APP_UID}:{APP_UID}", "numeric non-root USER"
        assert stage.instructions[-1].keyword == "ENTRYPOINT"
        assert stage.instructions[-1].args == f'["python", "-m", "services.{service}"]'
        exposed = {int(p) for i in stage.all("EXPOSE") for p in i.args.split()}
        assert exposed == {PORTS[service], 9090}
        env = " ".join(i.args for i in stage.all("ENV"))
        for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "RAG_LISTEN_HOST=0.0.0.0"):
            assert setting in env, setting
        # Only the runtime's, the shared code's and this service's sources.
        sources = copied_sources(stage)
        assert sorted(sources) == sorted(
            [
                "services/__init__.py",
                "services/common/",
                "services/runtime/",
                f"services/{service}/",
            ]
        )
        copies_from = [i.args.split()[0] for i in stage.all("COPY") if i.args.startswith("--from=")]
        assert "--from=protos" in copies_from
        assert not stage.all("RUN") or all("pip" not in i.args for i in stage.all("RUN"))


def test_embedding_image_with_and_without_the_local_model() -> None:
    df = dockerfile("embedding")
    assert df.stages[-1].name == "local-model", "the default target embeds the model"
    venv_from = {
        t: next(i.args.split()[0] for i in df.stage(t).all("COPY") if "/opt/venv" in i.args)
        for t in TARGETS["embedding"]
    }
    assert venv_from == {"local-model": "--from=deps-local-model", "remote": "--from=deps"}
    local = df.stage("deps-local-model")
    install = " ".join(i.args for i in local.all("RUN"))
    assert '--index-url "${TORCH_INDEX_URL}"' in install and "torch" in install
    assert "whl/cpu" in " ".join(i.args for i in local.all("ARG"))
    env = " ".join(i.args for i in df.stage("local-model").all("ENV"))
    assert "HF_HUB_OFFLINE=1" in env, "the model never downloads at run time"


def test_hadolint(tools: Tools) -> None:
    files = [DOCKER / s / "Dockerfile" for s in PLATFORM_SERVICES]
    result = run([tools.hadolint, "--failure-threshold", "info", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for service in PLATFORM_SERVICES:
        for stage in dockerfile(service).stages:
            for source in copied_sources(stage):
                top = source.split("/")[0]
                assert top in allowed, f"{service}: COPY {source} is excluded by .dockerignore"


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    return {canonicalize_name(Requirement(s).name): Requirement(s) for s in specs}


def test_requirements_are_names_from_pyproject() -> None:
    """Versions live in pyproject.toml only; the images name what they install."""
    declared = _pyproject_requirements()
    direct = set(declared)
    allowed = closure(direct)
    files = [DOCKER / "runtime-requirements.txt", *sorted(DOCKER.glob("*/requirements*.txt"))]
    undeclared = []
    for f in files:
        for req in requirement_lines(f):
            assert not req.specifier and not req.extras, f"{f.name}: {req} (no versions here)"
            if canonicalize_name(req.name) not in allowed:
                undeclared.append(f"{req.name} ({f.relative_to(REPO)})")
    assert not undeclared, (
        "the images install packages pyproject.toml does not declare (so they would be "
        "unpinned, and missing from a fresh `pip install -e .`): add them to its "
        f"dependencies: {', '.join(undeclared)}"
    )
    constraints = subprocess.run(
        [sys.executable, DOCKER / "constraints.py", REPO / "pyproject.toml"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert {canonicalize_name(Requirement(c).name) for c in constraints if c} == direct


@pytest.mark.parametrize("service", PLATFORM_SERVICES)
def test_image_installs_everything_its_sources_import(service: str) -> None:
    """Module-level imports of the copied sources come with the base image; imports
    inside functions (backends loaded on demand) come with some target of it."""
    eager, lazy = third_party_imports(source_files(service))
    targets = TARGETS[service]
    base = closure(requirements_of(service, "remote" if service == "embedding" else targets[0]))
    everything = set().union(*(closure(requirements_of(service, t)) for t in targets))
    missing = {d: sorted(f) for d, f in eager.items() if d not in base}
    assert not missing, f"docker/{service}: add to its requirements: {missing}"
    missing = {d: sorted(f) for d, f in lazy.items() if d not in everything}
    assert not missing, f"docker/{service}: add to its requirements: {missing}"


@pytest.mark.parametrize("service", PLATFORM_SERVICES)
def test_image_sources_are_self_contained(service: str, tmp_path: Path) -> None:
    """Lay out /app as the final stage's COPY lines do and import the service's entry
    module from it alone: no import of another service's code, nothing missing."""
    gen = REPO / "gen" / "python"
    if not (gen / "ragplatform").is_dir():
        pytest.skip("generated gRPC code missing: run scripts/setup.sh")
    app = tmp_path / "app"
    for source in copied_sources(final_stages(service)[0]):
        src, dst = REPO / source, app / source
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    shutil.copytree(gen, app / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    probe = f"""
import sys
repo_paths = {{{str(REPO)!r}, {str(gen)!r}, ""}}
sys.path = [p for p in sys.path if p.rstrip("/") not in repo_paths]
sys.path[:0] = [{str(app)!r}, {str(app / "gen")!r}]
# The project is installed in editable mode: drop that finder so only /app counts.
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import services.{service}.__main__ as entry
for name, module in list(sys.modules.items()):
    if name.split(".")[0] in ("services", "ragplatform"):
        where = [getattr(module, "__file__", None) or ""] + list(getattr(module, "__path__", []))
        where = [w for w in where if w]
        assert where and all(w.startswith({str(app)!r}) for w in where), (name, where)
print("ok", entry.__file__)
"""
    result = run([sys.executable, "-c", probe], cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
