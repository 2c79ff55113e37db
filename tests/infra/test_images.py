"""The images, checked without a Docker engine: docker/Dockerfile, which builds every
image, is parsed, resolved with each image's build arguments (VARIANTS) and linted
(hadolint); what each image's virtualenv installs is compared with what its copied
sources import, and the copied sources are imported from a copy laid out like the
image.
"""

from __future__ import annotations

import json
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
    Build,
    Dockerfile,
    closure,
    context_sources,
    matches,
    parse,
    pip_installs,
    requirement_lines,
    third_party_imports,
)

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
PYTHON_BASE = "python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}"
# Every image, by service and variant: its build arguments (skaffold.yaml builds these).
# The embedding image has two variants: with the packaged local model and without.
VARIANTS: dict[str, dict[str, dict[str, str]]] = {
    s: {"default": {"SERVICE": s, "PORT": str(PORTS[s])}} for s in PLATFORM_SERVICES
}
VARIANTS["embedding"] = {
    "local-model": {**VARIANTS["embedding"]["default"], "LOCAL_MODEL": "true"},
    "remote": {**VARIANTS["embedding"]["default"], "LOCAL_MODEL": "false"},
}
IMAGES = [
    pytest.param(s, v, id=s if v == "default" else f"{s}-{v}")
    for s in PLATFORM_SERVICES
    for v in VARIANTS[s]
]
APP_UID = 10001


def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE)


def image(service: str, variant: str) -> Build:
    return Build(dockerfile(), VARIANTS[service][variant])


def venv_stage(build: Build) -> str:
    """The stage the final image copies the virtualenv from."""
    (source,) = [
        i.args.split()[0].removeprefix("--from=")
        for i in build.instructions()
        if i.keyword == "COPY" and i.args.startswith("--from=") and "/opt/venv" in i.args
    ]
    return source


def installed(build: Build) -> set[str]:
    """What the image's virtualenv installs: the packages its pip installs name and the
    lines of the requirement files they install, as the build copies them."""
    copied = {}
    names: set[str] = set()
    for stage in build.chain(venv_stage(build)):
        for source in context_sources(stage):
            for path in matches(source, REPO):
                copied[path.name] = path
        for i in stage.all("RUN"):
            packages, files = pip_installs(i.args)
            names.update(canonicalize_name(p) for p in packages)
            for f in files:
                name = f.rsplit("/", 1)[-1]
                assert name in copied, f"{stage.name}: {f} is not copied into the build"
                names.update(canonicalize_name(r.name) for r in requirement_lines(copied[name]))
    return names


def source_files(service: str) -> list[Path]:
    files = [REPO / "services" / "__init__.py"]
    for package in ("common", "runtime", service):
        files.extend(sorted((REPO / "services" / package).rglob("*.py")))
    return files


def test_one_dockerfile_for_every_service() -> None:
    assert not list(DOCKER.glob("*/Dockerfile")), "docker/Dockerfile builds every image"
    for service in PLATFORM_SERVICES:
        assert (DOCKER / service / "requirements.txt").is_file()
    # A service with a local-model requirement file has both variants, the others none.
    for service in PLATFORM_SERVICES:
        local = (DOCKER / service / "requirements-local-model.txt").is_file()
        assert (set(VARIANTS[service]) == {"local-model", "remote"}) == local, service


def test_multi_stage_slim_and_pinned() -> None:
    df = dockerfile()
    assert len(df.stages) >= 3, "protos, deps and a runtime stage"
    for name in ("PYTHON_VERSION", "DEBIAN_RELEASE"):
        assert re.fullmatch(r"[0-9a-z.]+", df.global_args.get(name, "")), (
            f"ARG {name} needs a default"
        )
    assert re.fullmatch(r"3\.11\.[0-9]+", df.global_args["PYTHON_VERSION"]), "pinned patch release"
    for name in ("SERVICE", "PORT"):
        assert df.global_args.get(name) == "", f"ARG {name}: required, no default"
    names = [s.name for s in df.stages]
    assert len(set(names)) == len(names) and all(names), "every stage named once"
    assert df.stages[-1].name == "runtime", "the default target is the image"
    for service in PLATFORM_SERVICES:
        for variant in VARIANTS[service]:
            build = image(service, variant)
            for stage in build.needed():
                if build.parent(stage) is not None:
                    continue  # built on an earlier stage
                raw = df.stages[names.index(stage)]
                assert raw.base == PYTHON_BASE, raw.base
    assert not any(s.all("HEALTHCHECK") for s in df.stages), "Kubernetes probes, no HEALTHCHECK"
    text = df.path.read_text()
    assert "pip install" in text and "-c /tmp/req/constraints.txt" in text, (
        "versions from pyproject"
    )


@pytest.mark.parametrize(("service", "variant"), IMAGES)
def test_final_image_runs_the_service_unprivileged(
    service: str, variant: str, tmp_path: Path
) -> None:
    chart = load_yaml(CHART / "values.yaml")
    assert chart["podSecurityContext"]["runAsUser"] == APP_UID
    build = image(service, variant)
    final = build.instructions()
    users = [i for i in final if i.keyword == "USER"]
    assert users and users[-1].args == f"{APP_UID}:{APP_UID}", "numeric non-root USER"
    assert final[-1].keyword == "ENTRYPOINT"
    assert len([i for i in final if i.keyword in ("ENTRYPOINT", "CMD")]) == 1
    exposes = [i for i in final if i.keyword == "EXPOSE"]
    assert len(exposes) == 1, "one EXPOSE: the service's port and the metrics port"
    assert [int(p) for p in exposes[0].args.split()] == [PORTS[service], 9090]
    env = build.env()
    expected = {
        "PYTHONPATH": "/app:/app/gen",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": "/tmp",
        "RAG_LISTEN_HOST": "0.0.0.0",
        "RAG_DATA_DIR": "/tmp/ragdata",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert env["PATH"].startswith("/opt/venv/bin:")
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    assert f'org.opencontainers.image.title="ragplatform-{service}"' in labels
    # Only the runtime's, the shared code's and this service's sources.
    sources = [s for stage in build.chain() for s in context_sources(stage)]
    assert sorted(sources) == sorted(
        [
            "services/__init__.py",
            "services/common/",
            "services/runtime/",
            f"services/{service}/",
        ]
    )
    copies_from = [
        i.args.split()[0] for i in final if i.keyword == "COPY" and i.args.startswith("--from=")
    ]
    assert "--from=protos" in copies_from
    assert all("pip" not in i.args for i in final if i.keyword == "RUN")
    # The entrypoint runs `python -m services.<service>` (exec'd: PID 1) with the
    # container's arguments: run it with a stand-in python that prints its argv.
    entrypoint = json.loads(final[-1].args)
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    result = run(
        [*entrypoint, "--flag", "a b"],
        env={**{k: v for k, v in env.items() if k != "PATH"}, "PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-m", f"services.{service}", "--flag", "a b"]


def test_embedding_image_with_and_without_the_local_model() -> None:
    local, remote = image("embedding", "local-model"), image("embedding", "remote")
    assert "deps-local-model" in local.needed() and "deps-local-model" not in remote.needed()
    assert venv_stage(remote) == "deps"
    assert local.parent(venv_stage(local)) == "deps", "the local model on top of deps"
    install = " ".join(i.args for i in local.stage(venv_stage(local)).all("RUN"))
    assert '--index-url "${TORCH_INDEX_URL}"' in install and "torch" in install
    args = " ".join(i.args for i in local.stage(venv_stage(local)).all("ARG"))
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args
    assert "torch" in installed(local) and "torch" not in installed(remote)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/tmp/huggingface"}
    assert {k: local.env().get(k) for k in offline} == offline, "no download at run time"
    assert not set(offline) & set(remote.env())
    for service in PLATFORM_SERVICES:
        for variant in VARIANTS[service]:
            if variant != "local-model":
                build = image(service, variant)
                assert "deps-local-model" not in build.needed(), (service, variant)
                assert not set(offline) & set(build.env()), (service, variant)
    # Without LOCAL_MODEL the embedding build stops (it never silently drops the
    # model); the services without a local model build without it.
    guard = " ".join(i.args for i in dockerfile().stage("deps").all("RUN"))
    assert "requirements-local-model.txt" in guard and '-z "${LOCAL_MODEL}"' in guard
    assert "exit 1" in guard


@pytest.mark.parametrize(("service", "variant"), IMAGES)
def test_build_copies_files_that_exist(service: str, variant: str) -> None:
    build = image(service, variant)
    for name in build.needed():
        for source in context_sources(build.stage(name)):
            assert matches(source, REPO), f"{service} ({variant}): COPY {source}: no such file"


def test_hadolint(tools: Tools) -> None:
    result = run([tools.hadolint, "--failure-threshold", "info", DOCKERFILE])
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
        for variant in VARIANTS[service]:
            build = image(service, variant)
            for name in build.needed():
                for source in context_sources(build.stage(name)):
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
    """Module-level imports of the copied sources come with every variant of the image;
    imports inside functions (backends loaded on demand) come with some variant."""
    eager, lazy = third_party_imports(source_files(service))
    variants = [closure(installed(image(service, v))) for v in VARIANTS[service]]
    base = set.intersection(*variants)
    everything = set.union(*variants)
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
        pytest.skip("generated gRPC code (gen/python) missing: run `make setup`")
    app = tmp_path / "app"
    build = image(service, next(iter(VARIANTS[service])))
    for source in (s for stage in build.chain() for s in context_sources(stage)):
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
