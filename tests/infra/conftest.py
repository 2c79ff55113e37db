"""Shared fixtures of the deployment checks: tools, chart renders, parsed Terraform.

Every check here is offline and uses the real tools that scripts/infra_setup.sh
installs. A test needing a tool that is not installed is skipped with the reason,
which `make test` (RAG_TESTS_STRICT=1, tests/conftest.py) turns into a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ragplatform"
TOOLS = REPO / "tools" / "infra"
TERRAFORM_DIR = REPO / "terraform"
PROD_ENV = TERRAFORM_DIR / "environments" / "prod"

PLATFORM_SERVICES = ("gateway", "query", "ingestion", "embedding", "retrieval", "generation")
GRPC_PORTS = {"query": 50051, "ingestion": 50052, "embedding": 50053, "retrieval": 50054}
GRPC_PORTS["generation"] = 50055
PORTS = {**GRPC_PORTS, "gateway": 8080}
METRICS_PORT = 9090
RELEASE = "ragplatform"
NAMESPACE = "ragplatform"

SETUP_HINT = "run `bash scripts/infra_setup.sh` (installs the offline infra tools)"


def _unavailable(what: str, hint: str = SETUP_HINT) -> NoReturn:
    pytest.skip(f"{what} is not installed: {hint}")


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    checkov: Path
    hadolint: Path
    terraform: Path
    node_modules: Path
    node: Path


@pytest.fixture(scope="session")
def tools() -> Tools:
    """Paths of the infra tools; skips when scripts/infra_setup.sh was not run."""
    found: dict[str, Path] = {}
    wanted = {
        "helm": TOOLS / "bin" / "helm",
        "kubectl": TOOLS / "bin" / "kubectl",
        "checkov": TOOLS / "venv" / "bin" / "checkov",
        "hadolint": REPO / ".venv" / "bin" / "hadolint",
        "node_modules": TOOLS / "node_modules" / "@kubernetes-models",
    }
    for name, path in wanted.items():
        if not path.exists():
            _unavailable(f"{name} ({path.relative_to(REPO)})")
        found[name] = path
    found["node_modules"] = TOOLS / "node_modules"
    terraform = shutil.which("terraform") or (
        str(TOOLS / "bin" / "terraform") if (TOOLS / "bin" / "terraform").exists() else None
    )
    if terraform is None:
        _unavailable("terraform")
    found["terraform"] = Path(str(terraform))
    node = shutil.which("node")
    if node is None:
        _unavailable("node", "install Node.js and npm (README's prerequisites), then `make setup`")
    found["node"] = Path(str(node))
    return Tools(**found)


def require_module(name: str) -> Any:
    """Import a Python checker installed from requirements-infra.txt, or skip."""
    try:
        return __import__(name)
    except ImportError:
        _unavailable(f"the Python package providing {name!r} (requirements-infra.txt)")


# ------------------------------------------------------------------------ renders


Obj = dict[str, Any]

# Every optional feature switched on, on top of the prod values: renders every template.
ALL_FEATURES: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "httpRoute": {"enabled": True, "parentRefs": [{"name": "external", "namespace": "gateways"}]},
}
# The dev values with the in-cluster Redis as the cache.
DEV_REDIS: dict[str, Any] = {
    "backends": {"cache": {"backend": "redis"}},
    "redis": {"mode": "inCluster", "inCluster": {"auth": {"existingSecret": "redis-auth"}}},
}
# The prod values with the Qdrant cluster instead of Vector Search (the documented option).
PROD_QDRANT: dict[str, Any] = {
    "backends": {"retrieval": {"backend": "qdrant"}},
    "qdrant": {"enabled": True},
}
# The prod values with what `terraform output -raw helm_values` adds (a public endpoint).
PROD_GCP: dict[str, Any] = {
    "backends": {
        "retrieval": {
            "vertex": {
                "index": "projects/ragplatform-prod/locations/europe-west4/indexes/111",
                "indexEndpoint": (
                    "projects/ragplatform-prod/locations/europe-west4/indexEndpoints/222"
                ),
                "deployedIndexId": "ragplatform_chunks",
                "queryEndpoint": "333.europe-west4-444.vdb.vertexai.goog",
            },
            "firestore": {"database": "ragplatform"},
        }
    }
}
VARIANTS: dict[str, tuple[str | None, dict[str, Any] | None]] = {
    "defaults": (None, None),
    "dev": ("dev", None),
    "prod": ("prod", None),
    "prod-all": ("prod", ALL_FEATURES),
    "prod-qdrant": ("prod", PROD_QDRANT),
    "prod-gcp": ("prod", PROD_GCP),
    "dev-redis": ("dev", DEV_REDIS),
}


@pytest.fixture(scope="session")
def render() -> Callable[..., list[Obj]]:
    """render(environment, overrides) -> objects, with helm-python-sdk (cached)."""
    require_module("helm_python")
    from scripts.infra_k8s import render as do_render

    cache: dict[str, list[Obj]] = {}

    def _render(environment: str | None, overrides: dict[str, Any] | None = None) -> list[Obj]:
        key = json.dumps([environment, overrides], sort_keys=True)
        if key not in cache:
            cache[key] = do_render(environment, overrides)
        return json.loads(json.dumps(cache[key]))

    return _render


@pytest.fixture(scope="session")
def renders(render: Callable[..., list[Obj]]) -> dict[str, list[Obj]]:
    """The chart rendered for each variant of VARIANTS."""
    return {name: render(env, over) for name, (env, over) in VARIANTS.items()}


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def component_of(obj: Obj) -> str | None:
    labels = obj.get("metadata", {}).get("labels", {})
    return labels.get("app.kubernetes.io/component")


def workloads(objects: list[Obj]) -> dict[str, Obj]:
    """Deployments and StatefulSets by component."""
    return {str(component_of(o)): o for o in objects if o["kind"] in ("Deployment", "StatefulSet")}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def run(cmd: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool; its output is in the assertion message when it fails."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


# ---------------------------------------------------------------------- terraform


@pytest.fixture(scope="session")
def hcl() -> dict[Path, dict[str, Any]]:
    """Every .tf file under terraform/, parsed by python-hcl2."""
    hcl2 = require_module("hcl2")
    parsed = {}
    for path in sorted(TERRAFORM_DIR.rglob("*.tf")):
        with path.open() as f:
            parsed[path] = hcl2.load(f)
    return parsed


def tf_clean(value: Any) -> Any:
    """python-hcl2 output without its quoting: '"x"' -> 'x', no __is_block__ markers."""
    if isinstance(value, dict):
        return {tf_clean(k): tf_clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [tf_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


@dataclass(frozen=True)
class TfBlock:
    path: Path
    type: str
    name: str
    body: dict[str, Any]


def tf_blocks(hcl: dict[Path, dict[str, Any]], kind: str) -> list[TfBlock]:
    """Blocks of a kind ("resource", "data", "module", "variable", "output") in every file.

    For resource and data the type is the resource type; otherwise it is the kind.
    """
    blocks = []
    for path, doc in hcl.items():
        for entry in doc.get(kind, []):
            entry = tf_clean(entry)
            for first, body in entry.items():
                if kind in ("resource", "data"):
                    for name, inner in body.items():
                        blocks.append(TfBlock(path, first, name, inner))
                else:
                    blocks.append(TfBlock(path, kind, first, body))
    return blocks


def tf_locals(hcl: dict[Path, dict[str, Any]], path: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in hcl[path].get("locals", []):
        merged.update(tf_clean(block))
    return merged


def tf_variable_defaults(hcl: dict[Path, dict[str, Any]], directory: Path) -> dict[str, Any]:
    return {
        b.name: b.body.get("default")
        for b in tf_blocks(hcl, "variable")
        if b.path.parent == directory
    }


def tf_interpolate(text: str, variables: dict[str, Any], local: dict[str, Any]) -> str:
    """Resolve simple ${var.x} and ${local.x} references (what the structure tests need)."""
    import re

    def sub(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        source = variables if scope == "var" else local
        value = source[name]
        return str(tf_interpolate(value, variables, local) if isinstance(value, str) else value)

    return re.sub(r"\$\{(var|local)\.([a-z_0-9]+)\}", sub, text)
