"""The Helm chart: lint, schema, Kubernetes validity, and what every workload must have.

Renders come from helm-python-sdk (the Helm v4 engine in-process) and are checked
against the real `helm` binary's output; objects are validated with
kubernetes-validate --strict for the cluster's Kubernetes version (Terraform's
`kubernetes_version`), custom resources with their published models.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import (
    CHART,
    DEV_REDIS,
    GRPC_PORTS,
    METRICS_PORT,
    NAMESPACE,
    PLATFORM_SERVICES,
    PORTS,
    PROD_ENV,
    RELEASE,
    VARIANTS,
    Obj,
    Tools,
    by_kind,
    component_of,
    require_module,
    run,
    tf_variable_defaults,
    workloads,
)

# Kinds validated against the Kubernetes OpenAPI schemas.
BUILTIN_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")
# Custom resources the chart may render, and how each is validated.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "model",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "model",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "model",
    ("networking.gke.io/v1", "HealthCheckPolicy"): "model",
    ("networking.gke.io/v1", "GCPBackendPolicy"): "model",
    ("cloud.google.com/v1", "BackendConfig"): "model",
    ("networking.gke.io/v1", "ManagedCertificate"): "model",
    ("networking.gke.io/v1beta1", "FrontendConfig"): "model",
    ("monitoring.googleapis.com/v1", "PodMonitoring"): "schemas/podmonitoring.json",
    ("monitoring.googleapis.com/v1", "Rules"): "schemas/rules.json",
    ("cert-manager.io/v1", "Certificate"): "model",
}
HERE = Path(__file__).parent


def kubernetes_version(hcl: dict[Path, dict[str, Any]]) -> str:
    """The cluster's Kubernetes minor version (Terraform), as kubernetes-validate wants it."""
    return f"{tf_variable_defaults(hcl, PROD_ENV)['kubernetes_version']}.0"


def containers(workload: Obj) -> list[Obj]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --------------------------------------------------------------------- helm itself


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_helm_lint_strict(tools: Tools, environment: str, hcl: dict[Path, dict[str, Any]]) -> None:
    values = CHART / f"values-{environment}.yaml"
    result = run(
        [
            tools.helm,
            "lint",
            "--strict",
            CHART,
            "-f",
            values,
            "--kube-version",
            kubernetes_version(hcl),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The SDK's linter (same engine, in-process) agrees.
    helm = require_module("helm_python")
    report = helm.lint(
        str(CHART),
        helm.values_from_yaml(values.read_text()),
        strict=True,
        kube_version=f"v{kubernetes_version(hcl)}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_sdk_render_matches_helm_template(
    tools: Tools, environment: str, render: Callable[..., list[Obj]]
) -> None:
    result = run(
        [
            tools.helm,
            "template",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "-f",
            CHART / f"values-{environment}.yaml",
        ]
    )
    assert result.returncode == 0, result.stderr
    from_binary = [d for d in yaml.safe_load_all(result.stdout) if d]

    def key(o: Obj) -> str:
        return json.dumps(o, sort_keys=True)

    assert sorted(map(key, from_binary)) == sorted(map(key, render(environment)))


BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown key": {"replicaCount": 3},
    "latest tag": {"services": {"query": {"image": {"tag": "latest"}}}},
    "root allowed": {"podSecurityContext": {"runAsNonRoot": False}},
    "writable root filesystem": {"containerSecurityContext": {"readOnlyRootFilesystem": False}},
    "privilege escalation": {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
    "no memory limit": {
        "services": {"query": {"resources": {"limits": {"cpu": "1", "memory": None}}}}
    },
    "wrong port": {"services": {"query": {"port": 6000}}},
    "exposed without api keys": {"ingress": {"enabled": True, "host": "rag.example.com"}},
    "redis external without secrets": {
        "backends": {"cache": {"backend": "redis"}},
        "redis": {
            "mode": "external",
            "external": {"url": "rediss://r:6378/0", "cidr": "10.0.0.0/16"},
        },
    },
    "plaintext memorystore": {"redis": {"external": {"url": "redis://r:6379/0"}}},
    "vllm chain without vllm": {"backends": {"generation": {"simpleChain": "vllm"}}},
    "unknown generation backend": {"backends": {"generation": {"complexChain": "gpt"}}},
    "gemini without project": {"backends": {"generation": {"complexChain": "gemini-pro"}}},
    "vllm without a gpu": {"vllm": {"resources": {"limits": {"nvidia.com/gpu": None}}}},
    "workload identity without project": {"gcp": {"workloadIdentity": {"enabled": True}}},
    "gcsfuse without bucket": {"vllm": {"modelCache": {"type": "gcsfuse"}}},
    "vector search without project": {"backends": {"retrieval": {"backend": "vertex"}}},
    "vector search without its resources": {
        "gcp": {"projectId": "ragplatform-prod", "region": "europe-west4"},
        "backends": {"retrieval": {"backend": "vertex"}},
    },
    "index endpoint not a resource name": {
        "backends": {"retrieval": {"vertex": {"indexEndpoint": "1234567890"}}}
    },
    "query endpoint with a scheme": {
        "backends": {"retrieval": {"vertex": {"queryEndpoint": "https://1.vdb.vertexai.goog"}}}
    },
    "bad firestore database id": {"backends": {"retrieval": {"firestore": {"database": "Rag"}}}},
    "negative embedding concurrency": {"backends": {"embedding": {"vertex": {"concurrency": -1}}}},
    "rate limits in redis without redis": {
        "services": {"gateway": {"rateLimits": {"backend": "redis"}}}
    },
    "rate limit burst under one": {
        "services": {"gateway": {"rateLimits": {"ask": {"perKey": {"rate": 1, "burst": 0}}}}}
    },
    "negative tenant concurrency": {"services": {"ingestion": {"maxConcurrentPerTenant": -1}}},
    "other embedder without a port": {"backends": {"embedding": {"otherAddresses": ["host"]}}},
    "grpc client without a tenant": {"tls": {"clients": {"acme-backend": {"access_labels": []}}}},
    "import source not a bucket": {
        "services": {"ingestion": {"sources": {"acme": ["https://x/"]}}}
    },
    "spare index without its endpoint": {
        "backends": {
            "retrieval": {
                "vertex": {"spareIndexes": [{"index": "projects/p/locations/l/indexes/i"}]}
            }
        }
    },
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects(case: str, tools: Tools, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(BAD_VALUES[case]))
    result = run([tools.helm, "template", RELEASE, CHART, "-f", values])
    assert result.returncode != 0, f"{case}: accepted"
    assert "schema" in result.stderr or "values don't meet" in result.stderr, result.stderr


def test_render_fails_when_the_embedding_and_retrieval_dimensions_differ(
    tools: Tools, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"backends": {"retrieval": {"dimension": 768}}})
    )  # prod embeds at 768: agreeing
    ok = run([tools.helm, "template", RELEASE, CHART, "-f", CHART / "values-prod.yaml"])
    assert ok.returncode == 0, ok.stderr
    values.write_text(
        yaml.safe_dump({"backends": {"embedding": {"vertex": {"outputDimensionality": 1536}}}})
    )
    result = run(
        [tools.helm, "template", RELEASE, CHART, "-f", CHART / "values-prod.yaml", "-f", values]
    )
    assert result.returncode != 0, "a 1536-dimension embedder over a 768-dimension store"
    assert "outputDimensionality (1536) must equal backends.retrieval.dimension (768)" in (
        result.stderr
    )


def test_schema_accepts_every_values_file() -> None:
    helm = require_module("helm_python")
    with helm.Chart.load(str(CHART)) as chart:
        for path in sorted(CHART.glob("values*.yaml")):
            values = helm.values_from_yaml(path.read_text())
            chart.validate_schema(chart.merge_values(values))


# --------------------------------------------------------------- object validity


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_objects_are_valid_kubernetes(
    variant: str, renders: dict[str, list[Obj]], hcl: dict[Path, dict[str, Any]]
) -> None:
    kv = require_module("kubernetes_validate")
    import kubernetes_validate.utils as kv_utils

    version = kubernetes_version(hcl)
    assert version in kv_utils.all_versions(), f"kubernetes-validate has no schemas for {version}"
    errors = []
    for obj in renders[variant]:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] in BUILTIN_GROUPS:
            try:
                kv.validate(obj, version, strict=True)
            except kv_utils.ValidationError as e:
                errors.append(f"{name}: {e.message} at {list(e.path)}")
        else:
            assert (obj["apiVersion"], obj["kind"]) in CUSTOM, f"{name}: unexpected kind"
    assert not errors, "\n".join(errors)


def test_custom_resources_are_valid(tools: Tools, renders: dict[str, list[Obj]]) -> None:
    jsonschema = require_module("jsonschema")
    objects = [o for o in renders["prod-all"] if o["apiVersion"] not in BUILTIN_GROUPS]
    seen = {(o["apiVersion"], o["kind"]) for o in objects}
    assert seen == set(CUSTOM), f"not every custom resource rendered: {set(CUSTOM) - seen}"

    by_model = [o for o in objects if CUSTOM[(o["apiVersion"], o["kind"])] == "model"]
    result = run(
        [tools.node, HERE / "crd_validate.mjs", tools.node_modules],
        input=json.dumps(by_model),
    )
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert len(verdicts) == len(by_model)
    bad = [v for v in verdicts if v["ok"] is not True]
    assert not bad, bad

    for o in objects:
        how = CUSTOM[(o["apiVersion"], o["kind"])]
        if how != "model":
            schema = json.loads((HERE / how).read_text())
            jsonschema.validate(o, schema)


def test_custom_resource_validation_catches_errors(
    tools: Tools, renders: dict[str, list[Obj]]
) -> None:
    """The validators are not vacuous: a broken object of each kind is rejected."""
    jsonschema = require_module("jsonschema")
    monitor = next(o for o in renders["prod-all"] if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "every minute"
    result = run(
        [tools.node, HERE / "crd_validate.mjs", tools.node_modules], input=json.dumps([monitor])
    )
    assert json.loads(result.stdout)[0]["ok"] is False
    for kind, schema in (("PodMonitoring", "podmonitoring.json"), ("Rules", "rules.json")):
        obj = next(o for o in renders["prod-all"] if o["kind"] == kind)
        obj["spec"]["unexpected"] = True
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, json.loads((HERE / "schemas" / schema).read_text()))


def test_names_are_unique(renders: dict[str, list[Obj]]) -> None:
    for variant, objects in renders.items():
        keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
        assert len(keys) == len(set(keys)), variant
        for o in objects:
            assert o["metadata"].get("namespace") in (NAMESPACE, None) or o["kind"] == "ConfigMap"
            assert len(o["metadata"]["name"]) <= 63


# ---------------------------------------------------------- every service has ...


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_every_workload_has_probes_resources_pdb_and_policy(
    variant: str, renders: dict[str, list[Obj]]
) -> None:
    objects = renders[variant]
    pdbs = by_kind(objects, "PodDisruptionBudget").values()
    policies = by_kind(objects, "NetworkPolicy").values()
    all_workloads = workloads(objects)
    assert set(PLATFORM_SERVICES) <= set(all_workloads)
    for component, w in all_workloads.items():
        labels = w["spec"]["template"]["metadata"]["labels"]
        for c in containers(w):
            assert {"livenessProbe", "readinessProbe"} <= set(c), f"{component}: probes"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{component}: {kind}"
        assert any(
            all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
            for p in pdbs
        ), f"{component}: no PodDisruptionBudget"
        own = [p for p in policies if selects_component(p, component)]
        assert own, f"{component}: no NetworkPolicy of its own"


def test_grpc_services_are_probed_with_the_health_service(renders: dict[str, list[Obj]]) -> None:
    """On the serving port in plaintext (dev), on the plaintext health port with TLS (prod)."""
    for variant, offset in (("dev", 0), ("prod", 2000)):
        ws = workloads(renders[variant])
        for component, port in GRPC_PORTS.items():
            c = containers(ws[component])[0]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert c[probe]["grpc"] == {"port": port + offset}, f"{component} {probe}"
        gateway = containers(ws["gateway"])[0]
        assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_prod_autoscales_every_service(renders: dict[str, list[Obj]]) -> None:
    hpas = {
        component_of(h): h for h in by_kind(renders["prod"], "HorizontalPodAutoscaler").values()
    }
    assert set(PLATFORM_SERVICES) | {"vllm"} <= set(hpas)
    for component, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-{component}"
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        if component == "vllm":
            metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
            assert metric == "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"
        else:
            assert "Resource" in kinds, f"{component}: no CPU target"
    # A custom metric where it fits: queue depth, backlog, in-flight, request rate.
    for component in ("gateway", "query", "ingestion", "embedding", "generation"):
        assert "Pods" in {m["type"] for m in hpas[component]["spec"]["metrics"]}, component
    assert not by_kind(renders["dev"], "HorizontalPodAutoscaler"), "dev runs fixed replicas"


def test_security_context_everywhere(renders: dict[str, list[Obj]]) -> None:
    for variant, objects in renders.items():
        for component, w in workloads(objects).items():
            pod = w["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{variant} {component}"
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert pod["automountServiceAccountToken"] is False
            assert pod["serviceAccountName"] == f"{RELEASE}-{component}"
            assert not pod.get("hostNetwork") and not pod.get("hostPID")
            for c in containers(w):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, f"{variant} {component}"
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert sc["runAsUser"] >= 10000
                assert ":latest" not in c["image"] and ":" in c["image"].rsplit("/", 1)[-1]


def test_services_expose_the_platform_ports(renders: dict[str, list[Obj]]) -> None:
    services = by_kind(renders["prod"], "Service")
    for component, port in PORTS.items():
        ports = {p["name"]: p["port"] for p in services[f"{RELEASE}-{component}"]["spec"]["ports"]}
        assert ports == {
            ("http" if component == "gateway" else "grpc"): port,
            "metrics": METRICS_PORT,
        }


def test_services_dial_each_other_through_the_chart_services(renders: dict[str, list[Obj]]) -> None:
    for variant in ("dev", "prod"):
        services = by_kind(renders[variant], "Service")
        for component, w in workloads(renders[variant]).items():
            if component not in PLATFORM_SERVICES:
                continue
            env = env_of(containers(w)[0])
            assert env["RAG_LISTEN_HOST"] == "0.0.0.0"
            assert env["RAG_METRICS_PORT"] == str(METRICS_PORT)
            for target, port in GRPC_PORTS.items():
                host, _, dialed = env[f"RAG_{target.upper()}_ADDR"].rpartition(":")
                assert host in services and int(dialed) == port
                assert {"grpc": port}.items() <= {
                    p["name"]: p["port"] for p in services[host]["spec"]["ports"]
                }.items()


def test_dev_settings_are_accepted_by_the_services(
    renders: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every RAG_* variable the dev chart sets is a setting of that service, with a valid
    value (the services ignore unknown variables, so a typo would pass silently)."""
    from services.embedding.__main__ import EmbeddingSettings
    from services.gateway.settings import GatewaySettings
    from services.generation.__main__ import GenerationSettings
    from services.ingestion.__main__ import IngestionSettings
    from services.query.__main__ import QuerySettings
    from services.retrieval.__main__ import RetrievalSettings

    classes = {
        "gateway": GatewaySettings,
        "query": QuerySettings,
        "ingestion": IngestionSettings,
        "embedding": EmbeddingSettings,
        "retrieval": RetrievalSettings,
        "generation": GenerationSettings,
    }
    for component, w in workloads(renders["dev"]).items():
        settings_class = classes[component]
        env = {k: v for k, v in env_of(containers(w)[0]).items() if k.startswith("RAG_")}
        fields = {f"RAG_{name.upper()}" for name in settings_class.model_fields}
        assert set(env) <= fields, f"{component}: unknown settings {set(env) - fields}"
        for key in [k for k in os.environ if k.startswith("RAG_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            assert isinstance(value, str), f"{component}: {key} is a secret in dev"
            monkeypatch.setenv(key, value)
        settings_class()


def test_prod_settings_are_known(renders: dict[str, list[Obj]]) -> None:
    from services.gateway.settings import GatewaySettings
    from services.generation.__main__ import GenerationSettings

    known = set()
    for cls in (GatewaySettings, GenerationSettings):
        known |= {f"RAG_{n.upper()}" for n in cls.model_fields}
    for module in ("embedding", "retrieval", "ingestion", "query"):
        mod = __import__(f"services.{module}.__main__", fromlist=["x"])
        cls = getattr(mod, f"{module.capitalize()}Settings")
        known |= {f"RAG_{n.upper()}" for n in cls.model_fields}
    for variant in ("prod-all", "prod-qdrant", "prod-gcp"):
        for component, w in workloads(renders[variant]).items():
            if component not in PLATFORM_SERVICES:
                continue
            names = {k for k in env_of(containers(w)[0]) if k.startswith("RAG_")}
            unknown = names - known
            assert not unknown, f"{variant} {component}: {unknown}"


VECTOR_SEARCH_ENV = {
    "RAG_VECTOR_SEARCH_INDEX",
    "RAG_VECTOR_SEARCH_INDEX_ENDPOINT",
    "RAG_VECTOR_SEARCH_DEPLOYED_INDEX_ID",
    "RAG_VECTOR_SEARCH_QUERY_ENDPOINT",
    "RAG_VECTOR_SEARCH_API_ENDPOINT",
    "RAG_FIRESTORE_DATABASE",
    "RAG_FIRESTORE_COLLECTION_PREFIX",
}


def test_prod_runs_vertex_embeddings_and_vector_search(renders: dict[str, list[Obj]]) -> None:
    """Prod: Vertex AI embeddings, Vector Search + Firestore on retrieval only, the
    Google project and region only where a Google API is called, no Qdrant."""
    values = yaml.safe_load((CHART / "values-prod.yaml").read_text())
    envs = {
        c: env_of(containers(w)[0])
        for c, w in workloads(renders["prod-gcp"]).items()
        if c in PLATFORM_SERVICES
    }
    retrieval, embedding = envs["retrieval"], envs["embedding"]
    assert retrieval["RAG_RETRIEVAL_BACKEND"] == "vertex"
    assert retrieval["RAG_RETRIEVAL_DIMENSION"] == "768"
    assert retrieval["RAG_VECTOR_SEARCH_INDEX"].endswith("/indexes/111")
    assert retrieval["RAG_VECTOR_SEARCH_INDEX_ENDPOINT"].endswith("/indexEndpoints/222")
    assert retrieval["RAG_VECTOR_SEARCH_DEPLOYED_INDEX_ID"] == "ragplatform_chunks"
    assert retrieval["RAG_VECTOR_SEARCH_QUERY_ENDPOINT"] == "333.europe-west4-444.vdb.vertexai.goog"
    assert retrieval["RAG_VECTOR_SEARCH_API_ENDPOINT"] == ""
    assert retrieval["RAG_FIRESTORE_DATABASE"] == "ragplatform"
    assert retrieval["RAG_FIRESTORE_COLLECTION_PREFIX"] == "rag"
    assert not {k for k in retrieval if k.startswith("RAG_QDRANT_")}
    assert embedding["RAG_EMBEDDING_BACKEND"] == "vertex"
    assert (
        embedding["RAG_VERTEX_EMBEDDING_MODEL"]
        == values["backends"]["embedding"]["vertex"]["model"]
    )
    assert embedding["RAG_VERTEX_EMBEDDING_DIMENSION"] == "768"
    # Tuning knobs left at 0 are left to the service's defaults.
    assert "RAG_VERTEX_EMBEDDING_CONCURRENCY" not in embedding
    assert "RAG_EMBEDDING_PRICES" not in embedding
    for component, env in envs.items():
        if component != "retrieval":
            # Ingestion keeps its import jobs in the same Firestore database.
            shared = {"RAG_FIRESTORE_DATABASE", "RAG_FIRESTORE_COLLECTION_PREFIX"}
            allowed = shared if component == "ingestion" else set()
            assert not set(env) & (VECTOR_SEARCH_ENV - allowed), f"{component} gets Vector Search's"
        if component != "embedding":
            assert not {k for k in env if k.startswith("RAG_VERTEX_EMBEDDING_")}, component
        google = component in ("embedding", "retrieval", "generation", "ingestion")
        assert ("RAG_GCP_PROJECT" in env) is google, component  # ingestion: gs://, jobs
        if google:
            assert env["RAG_GCP_PROJECT"] == "ragplatform-prod"
            assert env["RAG_GCP_LOCATION"] == "europe-west4"
    for variant in ("prod", "prod-gcp", "prod-all"):
        assert "qdrant" not in workloads(renders[variant]), f"{variant} deploys Qdrant"
    # values-prod.yaml itself: vertex, with the Firestore database terraform creates.
    assert values["backends"]["retrieval"]["backend"] == "vertex"
    assert values["qdrant"]["enabled"] is False


def test_embedding_tuning_and_prices_render_when_set(render: Callable[..., list[Obj]]) -> None:
    over = {
        "backends": {
            "embedding": {
                "vertex": {
                    "model": "text-embedding-005",
                    "maxTextsPerRequest": 250,
                    "maxTokensPerRequest": 20000,
                    "concurrency": 8,
                    "prices": {"text-embedding-005": 0.025, "gemini-embedding-001": 0.15},
                }
            }
        }
    }
    env = env_of(containers(workloads(render("prod", over))["embedding"])[0])
    assert env["RAG_VERTEX_EMBEDDING_MODEL"] == "text-embedding-005"
    assert env["RAG_VERTEX_EMBEDDING_MAX_TEXTS_PER_REQUEST"] == "250"
    assert env["RAG_VERTEX_EMBEDDING_MAX_TOKENS_PER_REQUEST"] == "20000"
    assert env["RAG_VERTEX_EMBEDDING_CONCURRENCY"] == "8"
    assert json.loads(env["RAG_EMBEDDING_PRICES"]) == {
        "text-embedding-005": 0.025,
        "gemini-embedding-001": 0.15,
    }


def test_other_embedders_reach_the_services_that_follow_a_reindex(
    render: Callable[..., list[Obj]],
) -> None:
    addresses = ["embedding-gemini.rag.svc:50053", "embedding-005.rag.svc:50053"]
    found = workloads(render("prod", {"backends": {"embedding": {"otherAddresses": addresses}}}))
    for component in ("query", "ingestion"):
        assert env_of(containers(found[component])[0])["RAG_EMBEDDING_ADDRS"] == ",".join(addresses)
    for component in ("gateway", "retrieval", "embedding", "generation"):
        assert "RAG_EMBEDDING_ADDRS" not in env_of(containers(found[component])[0])


def test_spare_vector_search_indexes_reach_retrieval(render: Callable[..., list[Obj]]) -> None:
    spare = {
        "index": "projects/p/locations/us-central1/indexes/2",
        "indexEndpoint": "projects/p/locations/us-central1/indexEndpoints/1",
        "deployedIndexId": "rag_chunks_spare_1",
    }
    over = {"backends": {"retrieval": {"vertex": {"spareIndexes": [spare]}}}}
    env = env_of(containers(workloads(render("prod", over))["retrieval"])[0])
    assert json.loads(env["RAG_VECTOR_SEARCH_SPARE_INDEXES"]) == [
        {
            "index": spare["index"],
            "index_endpoint": spare["indexEndpoint"],
            "deployed_index_id": spare["deployedIndexId"],
            "query_endpoint": "",
        }
    ]


def test_prod_turns_mutual_tls_on(
    renders: dict[str, list[Obj]], render: Callable[..., list[Obj]]
) -> None:
    """Every component and ragctl get a certificate named after their identity; the
    gRPC services mount it, probe health on the plaintext health port, and learn the
    internal clients; dev stays plaintext."""
    prod = renders["prod"]
    certificates = {o["spec"]["commonName"]: o for o in prod if o["kind"] == "Certificate"}
    assert set(certificates) == {*workloads(prod), "ragctl"} - {"vllm", "qdrant"}
    for component, workload in workloads(prod).items():
        if component not in certificates:
            continue
        container = containers(workload)[0]
        env = env_of(container)
        assert env["RAG_TLS_CERT_FILE"] == "/etc/ragplatform/tls/tls.crt"
        secret = certificates[component]["spec"]["secretName"]
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == secret
        if component != "gateway":
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
            assert container["readinessProbe"]["grpc"]["port"] == port + 2000
            assert env["RAG_HEALTH_PORT_OFFSET"] == "2000"
    assert not [o for o in renders["dev"] if o["kind"] == "Certificate"]
    clients = {"acme-backend": {"tenant": "acme", "access_labels": ["hr"]}}
    query = workloads(render("prod", {"tls": {"clients": clients}}))["query"]
    assert json.loads(env_of(containers(query)[0])["RAG_GRPC_CLIENTS"]) == clients


def test_prod_keeps_import_jobs_in_firestore(renders: dict[str, list[Obj]]) -> None:
    """Jobs outlive a pod and are shared by the replicas: Firestore, retrieval's database."""
    prod = workloads(renders["prod"])
    ingestion = env_of(containers(prod["ingestion"])[0])
    retrieval = env_of(containers(prod["retrieval"])[0])
    assert ingestion["RAG_INGESTION_JOB_STORE"] == "firestore"
    assert ingestion["RAG_FIRESTORE_DATABASE"] == retrieval["RAG_FIRESTORE_DATABASE"]
    dev = env_of(containers(workloads(renders["dev"])["ingestion"])[0])
    assert dev["RAG_INGESTION_JOB_STORE"] == "file"


def test_tenants_import_sources_reach_ingestion(render: Callable[..., list[Obj]]) -> None:
    sources = {"acme": ["gs://acme-docs/", "gs://shared/acme/"]}
    found = workloads(render("prod", {"services": {"ingestion": {"sources": sources}}}))
    assert json.loads(env_of(containers(found["ingestion"])[0])["RAG_INGESTION_SOURCES"]) == sources


def test_workload_identity_annotations(renders: dict[str, list[Obj]]) -> None:
    prod = by_kind(renders["prod"], "ServiceAccount")
    for component in (*PLATFORM_SERVICES, "vllm"):
        sa = prod[f"{RELEASE}-{component}"]
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == (
            f"rag-{component}@ragplatform-prod.iam.gserviceaccount.com"
        )
        assert sa["automountServiceAccountToken"] is False
    qdrant = by_kind(renders["prod-qdrant"], "ServiceAccount")[f"{RELEASE}-qdrant"]
    assert "annotations" not in qdrant["metadata"]
    for sa in by_kind(renders["dev"], "ServiceAccount").values():
        assert "annotations" not in sa["metadata"], "dev uses no Google identity"


# ------------------------------------------------------------- vLLM, Qdrant, Redis


def test_vllm_runs_llama_on_a_gpu(renders: dict[str, list[Obj]]) -> None:
    for variant in ("prod", "prod-all"):
        vllm = workloads(renders[variant])["vllm"]
        pod = vllm["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"].startswith("vllm/vllm-openai:v")
        assert "--served-model-name=meta-llama/Llama-3.1-8B-Instruct" in c["args"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
        assert any(
            t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"]
        )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "/models" in mounts and "/dev/shm" in mounts
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models"]["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
        assert vllm["spec"]["template"]["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    generation = env_of(containers(workloads(renders["prod"])["generation"])[0])
    assert generation["RAG_VLLM_BASE_URL"] == f"http://{RELEASE}-vllm:8000/v1"
    assert generation["RAG_VLLM_MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "vllm" not in workloads(renders["dev"]), "dev has no GPU"


def test_qdrant_is_a_persistent_cluster(renders: dict[str, list[Obj]]) -> None:
    """The documented alternative to Vector Search: prod with backend qdrant."""
    qdrant = by_kind(renders["prod-qdrant"], "StatefulSet")[f"{RELEASE}-qdrant"]
    assert qdrant["spec"]["replicas"] >= 3
    assert qdrant["spec"]["serviceName"] == f"{RELEASE}-qdrant-headless"
    claims = qdrant["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"]
    env = env_of(qdrant["spec"]["template"]["spec"]["containers"][0])
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    headless = by_kind(renders["prod-qdrant"], "Service")[f"{RELEASE}-qdrant-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    retrieval = env_of(containers(workloads(renders["prod-qdrant"])["retrieval"])[0])
    assert retrieval["RAG_QDRANT_URL"] == f"http://{RELEASE}-qdrant:6334"
    assert "secretKeyRef" in retrieval["RAG_QDRANT_API_KEY"]
    assert not set(retrieval) & VECTOR_SEARCH_ENV
    assert "qdrant" not in workloads(renders["dev"])


def test_retrieval_keeps_its_embedded_index_on_a_volume_in_dev(
    renders: dict[str, list[Obj]],
) -> None:
    retrieval = workloads(renders["dev"])["retrieval"]
    assert retrieval["spec"]["replicas"] == 1
    assert retrieval["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in retrieval["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind(renders["dev"], "PersistentVolumeClaim")
    assert env_of(containers(retrieval)[0])["RAG_DATA_DIR"] == "/data"


def test_rate_limits_and_concurrency_caps_render(
    renders: dict[str, list[Obj]], render: Callable[..., list[Obj]]
) -> None:
    """Every limit reaches its service; prod shares the gateway's buckets in Memorystore,
    dev keeps them in each replica; an in-cluster Redis admits the gateway only when
    the buckets live there."""
    dev, prod = (
        {c: env_of(containers(w)[0]) for c, w in workloads(renders[v]).items()}
        for v in ("dev", "prod")
    )
    assert dev["gateway"]["RAG_GATEWAY_RATE_LIMIT_BACKEND"] == "memory"
    assert "RAG_REDIS_URL" not in dev["gateway"]
    gateway = prod["gateway"]
    assert gateway["RAG_GATEWAY_RATE_LIMIT_BACKEND"] == "redis"
    assert gateway["RAG_REDIS_URL"].startswith("rediss://") and gateway["RAG_REDIS_CA_CERT"]
    assert "secretKeyRef" in gateway["RAG_REDIS_PASSWORD"]
    assert "RAG_CACHE_BACKEND" not in gateway, "the gateway has no cache"
    assert gateway["RAG_GATEWAY_MAX_CONCURRENT_REQUESTS"] == "256"
    for route_class in ("ASK", "UPLOAD", "WRITE"):
        for per in ("KEY", "TENANT"):
            assert float(gateway[f"RAG_GATEWAY_{route_class}_RATE_PER_{per}"]) > 0
            assert int(gateway[f"RAG_GATEWAY_{route_class}_BURST_PER_{per}"]) >= 1
    assert prod["ingestion"]["RAG_INGESTION_MAX_CONCURRENT_PER_TENANT"] == "8"
    shared = render(
        "dev",
        {**DEV_REDIS, "services": {"gateway": {"rateLimits": {"backend": "redis"}}}},
    )
    assert ("gateway", "redis", 6379) in allowed_paths(shared)
    assert ("gateway", "redis", 6379) not in allowed_paths(renders["dev-redis"])


def test_redis_is_optional(renders: dict[str, list[Obj]]) -> None:
    assert "redis" not in workloads(renders["dev"]) and "redis" not in workloads(renders["prod"])
    assert "redis" in workloads(renders["dev-redis"])
    query = env_of(containers(workloads(renders["prod"])["query"])[0])
    assert query["RAG_REDIS_URL"].startswith("rediss://"), "Memorystore with TLS"
    assert query["RAG_REDIS_CA_CERT"]
    assert "secretKeyRef" in query["RAG_REDIS_PASSWORD"]


# ------------------------------------------------------------------ network policy


def selects_component(policy: Obj, component: str) -> bool:
    selector = policy["spec"]["podSelector"].get("matchLabels", {})
    return selector.get("app.kubernetes.io/component") == component


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In")
        for e in selector.get("matchExpressions", [])
    )


def _port_allowed(rule: dict[str, Any], port: int) -> bool:
    return "ports" not in rule or any(p.get("port") == port for p in rule["ports"])


def _peer_admits(rule: dict[str, Any], key: str, labels: dict[str, str]) -> bool:
    """Whether a rule's peers (from/to) admit a pod of this release's namespace."""
    peers = rule.get(key)
    if peers is None:
        return True
    return any(
        "podSelector" in p and "namespaceSelector" not in p and _matches(p["podSelector"], labels)
        for p in peers
    )


def allowed_paths(objects: list[Obj]) -> set[tuple[str, str, int]]:
    """(source, destination, port) pairs of release pods the NetworkPolicies allow."""
    policies = list(by_kind(objects, "NetworkPolicy").values())
    pods = {c: w["spec"]["template"]["metadata"]["labels"] for c, w in workloads(objects).items()}
    ports = {
        c: {p["containerPort"] for ct in containers(w) for p in ct.get("ports", [])}
        for c, w in workloads(objects).items()
    }
    allowed = set()
    for src, src_labels in pods.items():
        egress = [
            p
            for p in policies
            if "Egress" in p["spec"]["policyTypes"]
            and _matches(p["spec"]["podSelector"], src_labels)
        ]
        assert egress, f"{src} is not covered by an egress policy"
        for dst, dst_labels in pods.items():
            ingress = [
                p
                for p in policies
                if "Ingress" in p["spec"]["policyTypes"]
                and _matches(p["spec"]["podSelector"], dst_labels)
            ]
            assert ingress, f"{dst} is not covered by an ingress policy"
            for port in ports[dst]:
                out_ok = any(
                    _peer_admits(r, "to", dst_labels) and _port_allowed(r, port)
                    for p in egress
                    for r in p["spec"].get("egress", []) or []
                )
                in_ok = any(
                    _peer_admits(r, "from", src_labels) and _port_allowed(r, port)
                    for p in ingress
                    for r in p["spec"].get("ingress", []) or []
                )
                if out_ok and in_ok:
                    allowed.add((src, dst, port))
    return allowed


FLOWS = {
    ("gateway", "query", 50051),
    ("gateway", "ingestion", 50052),
    ("gateway", "retrieval", 50054),
    ("query", "embedding", 50053),
    ("query", "retrieval", 50054),
    ("query", "generation", 50055),
    ("ingestion", "embedding", 50053),
    ("ingestion", "retrieval", 50054),
}


@pytest.mark.parametrize(
    ("variant", "extra"),
    [
        ("dev", set()),
        (
            "dev-redis",
            {("query", "redis", 6379), ("ingestion", "redis", 6379), ("embedding", "redis", 6379)},
        ),
        ("prod", {("generation", "vllm", 8000)}),
        (
            "prod-qdrant",
            {
                ("generation", "vllm", 8000),
                ("retrieval", "qdrant", 6333),
                ("retrieval", "qdrant", 6334),
                ("qdrant", "qdrant", 6335),
            },
        ),
    ],
)
def test_network_policies_allow_exactly_the_flows(
    variant: str, extra: set[tuple[str, str, int]], renders: dict[str, list[Obj]]
) -> None:
    assert allowed_paths(renders[variant]) == FLOWS | extra


def test_network_policies_egress_outside_the_cluster(renders: dict[str, list[Obj]]) -> None:
    def cidrs(objects: list[Obj], component: str) -> set[str]:
        found = set()
        for p in by_kind(objects, "NetworkPolicy").values():
            if (
                p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
                != component
            ):
                continue
            for rule in p["spec"].get("egress") or []:
                found |= {
                    peer["ipBlock"]["cidr"] for peer in rule.get("to", []) if "ipBlock" in peer
                }
        return found

    google = "199.36.153.8/30"
    metadata = {"169.254.169.254/32", "169.254.169.252/32"}
    dev, prod = renders["dev"], renders["prod"]
    for component in PLATFORM_SERVICES:
        assert cidrs(dev, component) == set(), f"dev {component} reaches outside"
    assert cidrs(prod, "gateway") == {"10.60.0.0/16"}  # Memorystore: the shared rate limits
    assert cidrs(prod, "query") == {"10.60.0.0/16"}  # Memorystore only
    assert cidrs(prod, "ingestion") == {google, "10.60.0.0/16"} | metadata
    assert cidrs(prod, "embedding") == {google, "10.60.0.0/16"} | metadata
    assert cidrs(prod, "retrieval") == {google} | metadata
    # With the endpoint's public domain (terraform output), retrieval, and only it,
    # reaches public addresses on 443: the Vector Search endpoint, never a private range.
    gcp = renders["prod-gcp"]
    assert cidrs(gcp, "retrieval") == {google, "0.0.0.0/0"} | metadata
    for component in PLATFORM_SERVICES:
        if component != "retrieval":
            assert cidrs(gcp, component) == cidrs(prod, component), component
    for p in by_kind(gcp, "NetworkPolicy").values():
        for rule in p["spec"].get("egress") or []:
            for peer in rule.get("to", []):
                if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    assert selects_component(p, "retrieval") or selects_component(p, "vllm")
                    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
                        peer["ipBlock"]["except"]
                    )
                    assert [port["port"] for port in rule["ports"]] == [443]
    assert cidrs(prod, "generation") == {google} | metadata
    assert cidrs(prod, "vllm") == {google} | metadata
    for cidr in cidrs(prod, "ingestion"):
        assert ipaddress.ip_network(cidr).prefixlen >= 16, "no wide egress"


def test_default_deny_covers_every_pod(renders: dict[str, list[Obj]]) -> None:
    for variant, objects in renders.items():
        deny = by_kind(objects, "NetworkPolicy")[f"{RELEASE}-default-deny"]["spec"]
        assert deny["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in deny and "egress" not in deny
        for component, w in workloads(objects).items():
            labels = w["spec"]["template"]["metadata"]["labels"]
            assert _matches(deny["podSelector"], labels), f"{variant}: {component}"


def test_gateway_is_reachable_only_from_google_load_balancers(
    renders: dict[str, list[Obj]],
) -> None:
    policy = by_kind(renders["prod"], "NetworkPolicy")[f"{RELEASE}-gateway"]
    sources = {
        peer["ipBlock"]["cidr"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "ipBlock" in peer
    }
    assert sources == {"130.211.0.0/22", "35.191.0.0/16"}


# ---------------------------------------------------------------- monitoring


def test_monitoring_resources_follow_their_toggles(renders: dict[str, list[Obj]]) -> None:
    kinds = {v: {o["kind"] for o in objs} for v, objs in renders.items()}
    assert not kinds["dev"] & {"PodMonitoring", "ServiceMonitor", "PrometheusRule", "Rules"}
    assert {"PodMonitoring", "Rules", "ConfigMap"} <= kinds["prod"]
    assert not kinds["prod"] & {"ServiceMonitor", "PrometheusRule"}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds["prod-all"]
    monitors = by_kind(renders["prod"], "PodMonitoring")
    assert set(monitors) == {f"{RELEASE}-services", f"{RELEASE}-vllm"}
    qdrant_monitors = by_kind(renders["prod-qdrant"], "PodMonitoring")
    assert f"{RELEASE}-qdrant" in qdrant_monitors, "the Qdrant option is scraped too"
    services = monitors[f"{RELEASE}-services"]["spec"]
    assert services["endpoints"][0]["port"] == "metrics"
    selected = services["selector"]["matchExpressions"][0]["values"]
    assert sorted(selected) == sorted(PLATFORM_SERVICES)


def test_every_dashboard_and_rule_file_is_packaged(
    tools: Tools, tmp_path: Path, renders: dict[str, list[Obj]]
) -> None:
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    rules = sorted((CHART / "rules").glob("*.yaml"))
    assert dashboards and rules

    result = run([tools.helm, "package", CHART, "--destination", tmp_path])
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("ragplatform-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for f in dashboards + rules:
        assert f"ragplatform/{f.parent.name}/{f.name}" in names, f"{f.name} not packaged"

    configmaps = [o for o in renders["prod"] if o["kind"] == "ConfigMap"]
    for f in dashboards:
        cm = next(c for c in configmaps if f.name in c["data"])
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text())
    for kind, variant in (("PrometheusRule", "prod-all"), ("Rules", "prod")):
        packaged = {
            o["metadata"]["annotations"]["ragplatform.dev/source"]: o["spec"]
            for o in renders[variant]
            if o["kind"] == kind
        }
        for f in rules:
            assert packaged[f"rules/{f.name}"] == {
                "groups": yaml.safe_load(f.read_text())["groups"]
            }


def test_dashboards_and_rules_are_well_formed() -> None:
    uids = set()
    for f in sorted((CHART / "dashboards").glob("*.json")):
        dashboard = json.loads(f.read_text())
        assert dashboard.get("uid") and dashboard.get("title") and dashboard.get("panels"), f.name
        assert dashboard["uid"] not in uids, f"duplicate uid {dashboard['uid']}"
        uids.add(dashboard["uid"])
    for f in sorted((CHART / "rules").glob("*.yaml")):
        groups = yaml.safe_load(f.read_text())["groups"]
        assert groups, f.name
        for group in groups:
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), f"{f.name}: {rule}"
                assert rule["expr"]
