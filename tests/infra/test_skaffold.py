"""skaffold.yaml: every image it builds is deployed by the chart, and every platform
image the chart deploys is built, in each profile.

Skaffold is not installed here; the tests apply its profile semantics (fields of a
profile replace the config's, then JSON patches) and its Helm templating
(IMAGE_REPO_<image>, IMAGE_TAG_<image>, IMAGE_DIGEST_<image>) themselves, and render
the chart with the result.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.infra.conftest import (
    CHART,
    NAMESPACE,
    PLATFORM_SERVICES,
    RELEASE,
    REPO,
    Obj,
    load_yaml,
    workloads,
)
from tests.infra.dockerfiles import Build, parse
from tests.infra.test_images import DOCKERFILE, VARIANTS

SKAFFOLD = REPO / "skaffold.yaml"
PROFILES = {"dev": "values-dev.yaml", "prod": "values-prod.yaml"}
DIGEST = "sha256:" + "ab" * 32


def overlay(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for k, v in over.items():
            merged[k] = overlay(base[k], v) if k in base else copy.deepcopy(v)
        return merged
    return copy.deepcopy(over)


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> None:
    for patch in patches:
        *parents, last = [p for p in patch["path"].split("/") if p]
        node: Any = config
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key: Any = int(last) if isinstance(node, list) else last
        assert patch["op"] in ("replace", "add")
        if patch["op"] == "replace":
            assert key in node if isinstance(node, dict) else key < len(node), patch["path"]
        node[key] = patch["value"]


def effective(profile: str) -> dict[str, Any]:
    config = load_yaml(SKAFFOLD)
    (p,) = [p for p in config["profiles"] if p["name"] == profile]
    result = {k: v for k, v in config.items() if k != "profiles"}
    for field in ("build", "deploy", "manifests", "test", "portForward"):
        if field in p:
            result[field] = overlay(result.get(field, {}), p[field])
    apply_patches(result, p.get("patches", []))
    return result


def sanitize(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", image)


def templated_values(release: dict[str, Any], artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    """setValues and setValueTemplates as Skaffold passes them, built images filled in."""
    context = {}
    for a in artifacts:
        name = sanitize(a["image"])
        context[f"IMAGE_REPO_{name}"] = f"registry.test/{a['image']}"
        context[f"IMAGE_TAG_{name}"] = "built"
        context[f"IMAGE_DIGEST_{name}"] = DIGEST
    values: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        node = values
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    for path, value in release.get("setValues", {}).items():
        put(path, value)
    for path, template in release.get("setValueTemplates", {}).items():
        fields = re.findall(r"\{\{\s*\.([A-Za-z0-9_]+)\s*\}\}", template)
        unknown = [f for f in fields if f not in context]
        assert not unknown, f"{path}: unknown template fields {unknown}"
        put(
            path,
            re.sub(r"\{\{\s*\.([A-Za-z0-9_]+)\s*\}\}", lambda m: context[m.group(1)], template),
        )
    return values


def test_profiles_exist() -> None:
    config = load_yaml(SKAFFOLD)
    assert config["apiVersion"].startswith("skaffold/v4")
    assert {p["name"] for p in config["profiles"]} == set(PROFILES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_built_image_is_deployed_and_every_service_built(
    profile: str, render: Callable[..., list[Obj]]
) -> None:
    config = effective(profile)
    artifacts = config["build"]["artifacts"]
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "helm/ragplatform"
    assert release["namespace"] == NAMESPACE and release["name"] == RELEASE
    assert release["valuesFiles"] == [f"helm/ragplatform/{PROFILES[profile]}"]

    objects = render(profile, templated_values(release, artifacts))
    deployed = {
        c["image"]
        for w in workloads(objects).values()
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    for a in artifacts:
        expected = f"registry.test/{a['image']}:built"
        if profile == "prod":
            expected += f"@{DIGEST}"
        assert expected in deployed, f"{profile}: {a['image']} is built but not deployed"
    built = {f"registry.test/{a['image']}" for a in artifacts}
    for component in PLATFORM_SERVICES:
        image = workloads(objects)[component]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.split(":")[0] in built, (
            f"{profile}: {component} runs an image Skaffold does not build"
        )


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_artifacts_build_the_checked_images(profile: str) -> None:
    """Every artifact builds docker/Dockerfile with the build arguments of an image
    test_images checks (SERVICE, PORT and, for embedding, LOCAL_MODEL)."""
    artifacts = effective(profile)["build"]["artifacts"]
    assert sorted(a["image"] for a in artifacts) == sorted(
        f"ragplatform/{s}" for s in PLATFORM_SERVICES
    )
    df = parse(DOCKERFILE)
    declared = set(df.global_args) | {i.args.split("=")[0] for s in df.stages for i in s.all("ARG")}
    built = {}
    for a in artifacts:
        service = a["image"].split("/")[1]
        assert a["context"] == "."
        assert REPO / a["docker"]["dockerfile"] == DOCKERFILE
        args = dict(a["docker"].get("buildArgs", {}))
        assert set(args) <= declared, f"{service}: unknown build args {set(args) - declared}"
        assert all(isinstance(v, str) for v in args.values()), f"{service}: quote the values"
        assert args.pop("VERSION") == "{{.IMAGE_TAG}}"
        variants = [v for v, expected in VARIANTS[service].items() if expected == args]
        assert variants, f"{profile}: {service} is built with {args}, not as {VARIANTS[service]}"
        built[service] = variants[0]
        target = a["docker"].get("target")
        assert target is None or target == df.stages[-1].name, "the image is the last stage"
        Build(df, args, target).stage()  # resolves
    assert built["embedding"] == ("local-model" if profile == "dev" else "remote")


def test_prod_pushes_and_deploys_by_digest() -> None:
    prod, dev = effective("prod"), effective("dev")
    assert prod["build"]["local"]["push"] is True
    assert dev["build"]["local"]["push"] is False
    templates = prod["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    for service in PLATFORM_SERVICES:
        assert templates[f"services.{service}.image.digest"].startswith("{{.IMAGE_DIGEST_")


def test_values_files_exist() -> None:
    for values in PROFILES.values():
        assert (CHART / values).is_file()
