"""k8s/: the kustomize base and overlays stay what the chart renders.

k8s/ is generated from the chart (`python -m scripts.infra_k8s`); these tests build
every overlay with `kubectl kustomize` and compare it object for object with the
chart's render for that environment, then validate it like the chart's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import REPO, Obj, Tools, require_module, run
from tests.infra.test_chart import BUILTIN_GROUPS, CUSTOM, kubernetes_version

ENVIRONMENTS = ("dev", "prod")


def kustomize(tools: Tools, environment: str) -> list[Obj]:
    result = run([tools.kubectl, "kustomize", REPO / "k8s" / "overlays" / environment])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_k8s_is_generated_from_the_chart() -> None:
    require_module("helm_python")
    from scripts.infra_k8s import main

    assert main(["--check"]) == 0, "k8s/ is stale: run `python -m scripts.infra_k8s`"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_overlay_builds_to_the_chart_render(tools: Tools, environment: str) -> None:
    require_module("helm_python")
    from scripts.infra_k8s import key_of, kustomize_expected

    built = {key_of(o): o for o in kustomize(tools, environment)}
    expected = {key_of(o): o for o in kustomize_expected(environment)}
    assert set(built) == set(expected)
    different = [k for k in expected if built[k] != expected[k]]
    assert not different, f"differ from the chart: {different}"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_overlay_objects_are_valid_kubernetes(
    tools: Tools, environment: str, hcl: dict[Path, dict[str, Any]]
) -> None:
    kv = require_module("kubernetes_validate")
    import kubernetes_validate.utils as kv_utils

    version = kubernetes_version(hcl)
    errors = []
    for obj in kustomize(tools, environment):
        if obj["apiVersion"] in BUILTIN_GROUPS:
            try:
                kv.validate(obj, version, strict=True)
            except kv_utils.ValidationError as e:
                errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message}")
        else:
            assert (obj["apiVersion"], obj["kind"]) in CUSTOM
    assert not errors, "\n".join(errors)


def test_namespace_enforces_restricted_pod_security(tools: Tools) -> None:
    for environment in ENVIRONMENTS:
        namespaces = [o for o in kustomize(tools, environment) if o["kind"] == "Namespace"]
        assert len(namespaces) == 1
        labels = namespaces[0]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_json_patch_round_trip() -> None:
    """The generator's diff: applying its operations turns the old object into the new."""
    from scripts.infra_k8s import json_patch

    old = {"a": [1, 2], "b": {"c": 1, "d/e": 2}, "f": "x"}
    new = {"a": [1, 3], "b": {"c": 2, "g": [1]}, "h": None}
    ops = json_patch(old, new)
    doc: Any = json.loads(json.dumps(old))
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        if op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = op["value"]
    assert doc == new
