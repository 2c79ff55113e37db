"""terraform/: formatting, and the structure parsed with python-hcl2.

`terraform validate` needs the Google provider, which cannot be downloaded here; these
tests check what the platform relies on instead: a private cluster with a GPU pool,
CMEK on every data store, one Google service account with a Workload Identity
binding for each Kubernetes service account the chart annotates, and the values
the chart and Terraform must agree on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import (
    PROD_ENV,
    REPO,
    TERRAFORM_DIR,
    TfBlock,
    Tools,
    by_kind,
    load_yaml,
    run,
    tf_blocks,
    tf_interpolate,
    tf_locals,
    tf_variable_defaults,
)

MODULES = TERRAFORM_DIR / "modules"


def resources(hcl: dict[Path, dict[str, Any]], rtype: str) -> list[TfBlock]:
    return [b for b in tf_blocks(hcl, "resource") if b.type == rtype]


def one(hcl: dict[Path, dict[str, Any]], rtype: str, name: str | None = None) -> TfBlock:
    found = [b for b in resources(hcl, rtype) if name is None or b.name == name]
    assert len(found) == 1, f"expected one {rtype} {name or ''}, found {len(found)}"
    return found[0]


def first_block(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    assert isinstance(value, list) and value, f"block {key} missing"
    block = value[0]
    assert isinstance(block, dict)
    return block


def prod_module_call(hcl: dict[Path, dict[str, Any]], name: str) -> dict[str, Any]:
    calls = [b for b in tf_blocks(hcl, "module") if b.path.parent == PROD_ENV and b.name == name]
    assert len(calls) == 1, f"module {name} is not called once by the prod environment"
    return calls[0].body


def test_terraform_fmt(tools: Tools) -> None:
    result = run([tools.terraform, "fmt", "-check", "-recursive", "-diff", TERRAFORM_DIR])
    assert result.returncode == 0, f"terraform fmt -check failed:\n{result.stdout}{result.stderr}"


def test_layout_modules_and_one_environment() -> None:
    expected = {
        "network",
        "kms",
        "gke",
        "artifact-registry",
        "storage",
        "redis",
        "vector-search",
        "firestore",
        "workload-identity",
    }
    assert {p.name for p in MODULES.iterdir() if p.is_dir()} == expected
    for module in expected:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (MODULES / module / name).is_file(), f"{module}/{name} missing"
    assert [p.name for p in (TERRAFORM_DIR / "environments").iterdir()] == ["prod"]
    assert (TERRAFORM_DIR / "README.md").is_file()


def test_every_module_called_by_prod(hcl: dict[Path, dict[str, Any]]) -> None:
    sources = {b.body["source"] for b in tf_blocks(hcl, "module") if b.path.parent == PROD_ENV}
    for module in MODULES.iterdir():
        assert f"../../modules/{module.name}" in sources, f"{module.name} is not used"


def test_variables_have_descriptions_and_types(hcl: dict[Path, dict[str, Any]]) -> None:
    variables = tf_blocks(hcl, "variable")
    assert variables
    for v in variables:
        where = f"{v.path.relative_to(REPO)}: variable {v.name}"
        assert len(str(v.body.get("description", ""))) >= 10, f"{where} has no description"
        assert "type" in v.body, f"{where} has no type"


def test_key_variables_are_validated(hcl: dict[Path, dict[str, Any]]) -> None:
    validated = {
        (b.path.parent.name, b.name) for b in tf_blocks(hcl, "variable") if b.body.get("validation")
    }
    for name in (
        "project_id",
        "region",
        "kubernetes_version",
        "namespace",
        "release_name",
        "master_authorized_networks",
        "rbac_security_group",
        "vector_dimensions",
    ):
        assert ("prod", name) in validated, f"prod variable {name} has no validation"
    for module, name in (
        ("gke", "master_authorized_networks"),
        ("gke", "gpu_pool"),
        ("kms", "rotation_period"),
        ("workload-identity", "workloads"),
        ("network", "private_service_access_cidr"),
    ):
        assert (module, name) in validated, f"{module} variable {name} has no validation"


def test_outputs_have_descriptions(hcl: dict[Path, dict[str, Any]]) -> None:
    outputs = tf_blocks(hcl, "output")
    assert outputs
    for o in outputs:
        assert len(str(o.body.get("description", ""))) >= 10, f"output {o.name}: no description"
    secrets = {"auth_string", "server_ca_cert", "redis_auth_string", "redis_server_ca"}
    for o in outputs:
        if o.name in secrets:
            assert o.body.get("sensitive") is True, f"output {o.name} must be sensitive"


def test_cluster_is_private_and_hardened(hcl: dict[Path, dict[str, Any]]) -> None:
    cluster = one(hcl, "google_container_cluster").body
    private = first_block(cluster, "private_cluster_config")
    assert private["enable_private_nodes"] is True
    assert private["enable_private_endpoint"] is True
    authorized = first_block(cluster, "master_authorized_networks_config")
    assert authorized.get("gcp_public_cidrs_access_enabled") is False
    assert first_block(cluster, "workload_identity_config")["workload_pool"].endswith(
        ".svc.id.goog"
    )
    assert cluster["datapath_provider"] == "ADVANCED_DATAPATH", "NetworkPolicies need Dataplane V2"
    assert cluster["enable_shielded_nodes"] is True
    assert cluster["enable_legacy_abac"] is False
    assert cluster["remove_default_node_pool"] is True
    assert cluster["deletion_protection"] is True
    assert (
        first_block(cluster, "master_auth")["client_certificate_config"][0][
            "issue_client_certificate"
        ]
        is False
    )
    monitoring = first_block(cluster, "monitoring_config")
    assert first_block(monitoring, "managed_prometheus")["enabled"] is True
    addons = first_block(cluster, "addons_config")
    assert first_block(addons, "gcs_fuse_csi_driver_config")["enabled"] is True


def test_node_pools_are_hardened(hcl: dict[Path, dict[str, Any]]) -> None:
    pools = resources(hcl, "google_container_node_pool")
    assert {p.name for p in pools} == {"general", "gpu"}
    for pool in pools:
        management = first_block(pool.body, "management")
        assert management["auto_repair"] is True and management["auto_upgrade"] is True
        node = first_block(pool.body, "node_config")
        assert node["image_type"] == "COS_CONTAINERD"
        assert first_block(node, "workload_metadata_config")["mode"] == "GKE_METADATA"
        shielded = first_block(node, "shielded_instance_config")
        assert shielded["enable_secure_boot"] is True
        assert shielded["enable_integrity_monitoring"] is True
        assert node["metadata"]["disable-legacy-endpoints"] == "true"
        assert node["boot_disk_kms_key"] == "${var.disk_kms_key_id}", "boot disks need CMEK"
        assert node["service_account"] == "${var.node_service_account}"


def test_gpu_pool_matches_the_vllm_scheduling(
    hcl: dict[Path, dict[str, Any]], renders: dict[str, list[dict[str, Any]]]
) -> None:
    gpu = one(hcl, "google_container_node_pool", "gpu").body
    node = first_block(gpu, "node_config")
    accelerator = first_block(node, "guest_accelerator")
    assert accelerator["type"] == "${var.gpu_pool.accelerator_type}"
    assert first_block(accelerator, "gpu_driver_installation_config")["gpu_driver_version"]
    taint = first_block(node, "taint")
    assert (taint["key"], taint["value"], taint["effect"]) == (
        "nvidia.com/gpu",
        "present",
        "NO_SCHEDULE",
    )

    # The pool the prod environment asks for is what vLLM is scheduled onto.
    pool = prod_module_call(hcl, "gke")["gpu_pool"]
    vllm = by_kind(renders["prod"], "Deployment")["ragplatform-vllm"]["spec"]["template"]["spec"]
    assert vllm["nodeSelector"]["cloud.google.com/gke-accelerator"] == pool["accelerator_type"]
    assert vllm["nodeSelector"]["cloud.google.com/gke-nodepool"] == pool["name"]
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Equal",
        "value": "present",
        "effect": "NoSchedule",
    } in vllm["tolerations"]
    gpus = vllm["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) <= pool["accelerator_count"]


def test_cmek_everywhere(hcl: dict[Path, dict[str, Any]]) -> None:
    cluster = one(hcl, "google_container_cluster").body
    encryption = first_block(cluster, "database_encryption")
    assert encryption["state"] == "ENCRYPTED" and encryption["key_name"]
    for bucket in resources(hcl, "google_storage_bucket"):
        assert first_block(bucket.body, "encryption")["default_kms_key_name"], bucket.name
    assert one(hcl, "google_redis_instance").body["customer_managed_key"]
    for repo in resources(hcl, "google_artifact_registry_repository"):
        assert repo.body["kms_key_name"], repo.name
    for rtype, name in (
        ("google_vertex_ai_index", "chunks"),
        ("google_vertex_ai_index", "spare"),
        ("google_vertex_ai_index_endpoint", None),
    ):
        assert first_block(one(hcl, rtype, name).body, "encryption_spec")["kms_key_name"]

    key = one(hcl, "google_kms_crypto_key").body
    assert key["rotation_period"] == "${var.rotation_period}"
    assert first_block(key, "lifecycle")["prevent_destroy"] is True
    # Each consumer has its own key, and its service agent may use it.
    keys = prod_module_call(hcl, "kms")["keys"]
    assert set(keys) >= {"gke-secrets", "node-disks", "storage", "redis", "artifact-registry"}
    assert "vertex-ai" in keys
    assert all(spec["encrypters"] for spec in keys.values())


def test_memorystore_has_auth_and_tls(hcl: dict[Path, dict[str, Any]]) -> None:
    redis = one(hcl, "google_redis_instance").body
    assert redis["auth_enabled"] is True
    assert redis["transit_encryption_mode"] == "SERVER_AUTHENTICATION"
    assert redis["connect_mode"] == "PRIVATE_SERVICE_ACCESS"
    assert redis["tier"] == "STANDARD_HA"


def test_buckets_are_private(hcl: dict[Path, dict[str, Any]]) -> None:
    buckets = resources(hcl, "google_storage_bucket")
    assert buckets
    for b in buckets:
        assert b.body["uniform_bucket_level_access"] is True
        assert b.body["public_access_prevention"] == "enforced"
        assert first_block(b.body, "versioning")["enabled"] is True


def test_vector_search_is_public_streaming_and_sized_like_the_embedder(
    hcl: dict[Path, dict[str, Any]],
) -> None:
    endpoint = one(hcl, "google_vertex_ai_index_endpoint").body
    assert endpoint["public_endpoint_enabled"] == "${var.public_endpoint}"
    assert prod_module_call(hcl, "vector_search")["public_endpoint"] is True, (
        "the retrieval service queries the endpoint's public domain name"
    )
    deployed = one(hcl, "google_vertex_ai_index_endpoint_deployed_index", "chunks").body
    assert deployed["index_endpoint"] == "${google_vertex_ai_index_endpoint.chunks.id}"
    index = one(hcl, "google_vertex_ai_index", "chunks").body
    assert index["index_update_method"] == "STREAM_UPDATE"
    config = first_block(first_block(index, "metadata"), "config")
    # The store sends L2-normalised vectors: dot product on unit norm is cosine.
    assert config["distance_measure_type"] == "DOT_PRODUCT_DISTANCE"
    assert config["feature_norm_type"] == "UNIT_L2_NORM"
    assert config["dimensions"] == "${var.dimensions}"
    assert prod_module_call(hcl, "vector_search")["dimensions"] == "${var.vector_dimensions}"
    defaults = tf_variable_defaults(hcl, PROD_ENV)
    values = load_yaml(REPO / "helm" / "ragplatform" / "values-prod.yaml")
    dimension = values["backends"]["retrieval"]["dimension"]
    assert defaults["vector_dimensions"] == dimension
    assert values["backends"]["embedding"]["vertex"]["outputDimensionality"] == dimension

    # Spare indexes (a re-index's generations) are built like the live one, on its endpoint.
    spare = one(hcl, "google_vertex_ai_index", "spare").body
    spare_config = first_block(first_block(spare, "metadata"), "config")
    assert {**spare_config, "dimensions": config["dimensions"]} == config
    assert spare["index_update_method"] == "STREAM_UPDATE"
    spare_deployed = one(hcl, "google_vertex_ai_index_endpoint_deployed_index", "spare").body
    assert spare_deployed["index_endpoint"] == deployed["index_endpoint"]
    assert spare_deployed["dedicated_resources"] == deployed["dedicated_resources"]
    assert defaults["vector_spare_dimensions"] == [], "spares cost replicas: none by default"
    assert values["backends"]["retrieval"]["backend"] == "vertex"


def test_firestore_database_is_protected_and_scoped(hcl: dict[Path, dict[str, Any]]) -> None:
    db = one(hcl, "google_firestore_database").body
    assert db["type"] == "FIRESTORE_NATIVE"
    assert db["location_id"] == "${var.location}"
    assert db["delete_protection_state"] == "DELETE_PROTECTION_ENABLED"
    assert db["point_in_time_recovery_enablement"] == "POINT_IN_TIME_RECOVERY_ENABLED"
    assert db["deletion_policy"] == "ABANDON"
    assert first_block(db, "cmek_config")["kms_key_name"] == "${var.kms_key_id}"
    call = prod_module_call(hcl, "firestore")
    assert call["location"] == "${var.region}"
    assert call["kms_key_id"] == '${module.kms.key_ids["firestore"]}'
    assert call["users"] == {  # retrieval: chunk text, registry; ingestion: import jobs
        name: f'${{module.workload_identity.members["{name}"]}}'
        for name in ("retrieval", "ingestion")
    }
    assert "firestore" in prod_module_call(hcl, "kms")["keys"]
    # roles/datastore.user, conditioned on this database's name.
    grant = one(hcl, "google_project_iam_member", "user").body
    assert grant["role"] == "roles/datastore.user"
    condition = first_block(grant, "condition")
    assert condition["expression"] == (
        'resource.name == \\"projects/${var.project_id}/databases/${var.database_id}\\"'
    ) or condition["expression"] == (
        'resource.name == "projects/${var.project_id}/databases/${var.database_id}"'
    )
    # The database the chart names is the one terraform creates.
    values = load_yaml(REPO / "helm" / "ragplatform" / "values-prod.yaml")
    database = tf_variable_defaults(hcl, PROD_ENV)["firestore_database"]
    assert values["backends"]["retrieval"]["firestore"]["database"] == database
    assert "firestore.googleapis.com" in tf_locals(hcl, PROD_ENV / "main.tf")["apis"]


# The project roles of each workload, exactly (least privilege); the resource-level
# grants are checked on their resources.
TELEMETRY = {"roles/cloudtrace.agent", "roles/logging.logWriter", "roles/monitoring.metricWriter"}
EXPECTED_ROLES = {
    "gateway": TELEMETRY,
    "query": TELEMETRY,
    "ingestion": TELEMETRY | {"roles/documentai.apiUser"},
    "embedding": TELEMETRY | {"roles/aiplatform.user"},
    "retrieval": TELEMETRY | {"roles/aiplatform.user"},
    "generation": TELEMETRY | {"roles/aiplatform.user"},
    "vllm": {"roles/logging.logWriter"},
    "metrics-adapter": {"roles/monitoring.viewer"},
}


def test_each_workload_has_exactly_its_roles(hcl: dict[Path, dict[str, Any]]) -> None:
    local = tf_locals(hcl, PROD_ENV / "main.tf")
    telemetry = set(local["telemetry_roles"])
    assert telemetry == TELEMETRY
    roles = {}
    for key, w in local["workloads"].items():
        granted = w["roles"]
        if isinstance(granted, str):  # ${concat(local.telemetry_roles, [...])}
            extra = set(re.findall(r'"(roles/[A-Za-z.]+)"', granted))
            assert "local.telemetry_roles" in granted, f"{key}: {granted}"
            roles[key] = telemetry | extra
        else:
            roles[key] = set(granted)
    assert roles == EXPECTED_ROLES
    # Resource-level grants: who gets what, on which resource.
    resource_grants = {
        (b.body["role"], b.body["member"])
        for b in tf_blocks(hcl, "resource")
        if b.path.parent == PROD_ENV and b.type == "google_storage_bucket_iam_member"
    }
    assert resource_grants == {
        ("roles/storage.objectViewer", '${module.workload_identity.members["ingestion"]}'),
        ("roles/storage.objectViewer", '${module.workload_identity.members["vllm"]}'),
    }
    # Firestore: retrieval (chunks, registry) and ingestion (import jobs) only.
    assert set(prod_module_call(hcl, "firestore")["users"]) == {"retrieval", "ingestion"}


def test_helm_values_output_fills_the_chart_values(hcl: dict[Path, dict[str, Any]]) -> None:
    """Every key of `terraform output helm_values` is a key of the chart's values.yaml,
    and the retrieval vertex backend gets everything it needs from it."""
    outputs = {o.name: o.body for o in tf_blocks(hcl, "output") if o.path.parent == PROD_ENV}
    text = str(outputs["helm_values"]["value"])
    defaults = load_yaml(REPO / "helm" / "ragplatform" / "values.yaml")
    vertex = defaults["backends"]["retrieval"]["vertex"]
    for key in ("index", "indexEndpoint", "deployedIndexId", "queryEndpoint"):
        assert key in vertex and re.search(rf"\b{key}\s*=", text), key
    assert re.search(r"\bfirestore\s*=\s*\{\s*database\s*=\s*module\.firestore", text)
    assert "module.vector_search.public_endpoint_domain" in text
    assert "database" in defaults["backends"]["retrieval"]["firestore"]
    assert "outputDimensionality" in defaults["backends"]["embedding"]["vertex"]
    for key in ("projectId", "region"):
        assert key in defaults["gcp"]
    assert set(outputs["vector_search"]["value"]) == {
        "project",
        "location",
        "index",
        "index_endpoint",
        "deployed_index_id",
        "public_endpoint_domain",
    }
    assert "firestore_database" in outputs


def test_artifact_registry_tags_are_immutable(hcl: dict[Path, dict[str, Any]]) -> None:
    images = one(hcl, "google_artifact_registry_repository", "images").body
    assert first_block(images, "docker_config")["immutable_tags"] is True


def test_workload_identity_for_every_annotated_service_account(
    hcl: dict[Path, dict[str, Any]], renders: dict[str, list[dict[str, Any]]]
) -> None:
    """Each KSA the prod chart annotates has a Google service account of that email,
    bound to exactly that namespace/name with roles/iam.workloadIdentityUser."""
    main = PROD_ENV / "main.tf"
    variables = tf_variable_defaults(hcl, PROD_ENV)
    local = tf_locals(hcl, main)
    call = prod_module_call(hcl, "workload_identity")
    assert call["workloads"] == "${local.workloads}"
    prefix = call["account_prefix"]
    project = load_yaml(REPO / "helm" / "ragplatform" / "values-prod.yaml")["gcp"]["projectId"]

    terraform_bindings = {}
    for key, w in local["workloads"].items():
        namespace = tf_interpolate(w["namespace"], variables, local)
        ksa = tf_interpolate(w["ksa"], variables, local)
        terraform_bindings[(namespace, ksa)] = f"{prefix}{key}@{project}.iam.gserviceaccount.com"

    # The module creates the account and the binding from those keys.
    sa = one(hcl, "google_service_account", "workload").body
    assert sa["account_id"] == "${var.account_prefix}${each.key}"
    binding = one(hcl, "google_service_account_iam_member", "workload_identity").body
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == (
        "serviceAccount:${var.project_id}.svc.id.goog[${each.value.namespace}/${each.value.ksa}]"
    )

    annotated = {}
    for o in renders["prod"]:
        if o["kind"] != "ServiceAccount":
            continue
        email = o["metadata"].get("annotations", {}).get("iam.gke.io/gcp-service-account")
        if email:
            annotated[(o["metadata"]["namespace"], o["metadata"]["name"])] = email
    assert {f"ragplatform-{s}" for s in ("gateway", "query", "ingestion", "embedding")} <= {
        name for _, name in annotated
    }
    for ksa, email in annotated.items():
        assert ksa in terraform_bindings, f"no Workload Identity binding for {ksa}"
        assert terraform_bindings[ksa] == email, (
            f"{ksa}: chart {email}, terraform {terraform_bindings[ksa]}"
        )
    # And the chart's prefix is Terraform's.
    values = load_yaml(REPO / "helm" / "ragplatform" / "values-prod.yaml")
    assert values["gcp"]["workloadIdentity"]["serviceAccountPrefix"] == prefix
    assert variables["namespace"] == "ragplatform" and variables["release_name"] == "ragplatform"


def test_workloads_have_no_basic_roles(hcl: dict[Path, dict[str, Any]]) -> None:
    # Grants live in main.tf files (variables.tf only names basic roles to forbid them).
    text = "\n".join(p.read_text() for p in TERRAFORM_DIR.rglob("main.tf"))
    granted = set(re.findall(r'"(roles/[A-Za-z.]+)"', text))
    assert not granted & {"roles/owner", "roles/editor", "roles/viewer"}
    assert "roles/iam.serviceAccountTokenCreator" not in granted


def test_network_values_agree_with_the_chart(hcl: dict[Path, dict[str, Any]]) -> None:
    values = load_yaml(REPO / "helm" / "ragplatform" / "values-prod.yaml")
    network_vars = tf_variable_defaults(hcl, MODULES / "network")
    assert values["redis"]["external"]["cidr"] == network_vars["private_service_access_cidr"]
    network_locals = tf_locals(hcl, MODULES / "network" / "main.tf")
    defaults = load_yaml(REPO / "helm" / "ragplatform" / "values.yaml")
    assert defaults["networkPolicy"]["googleApisCidrs"] == [
        network_locals["private_googleapis_cidr"]
    ]
    # redis.<internal zone> is the name the chart dials.
    zone = network_vars["internal_dns_name"].rstrip(".")
    assert values["redis"]["external"]["url"].startswith(f"rediss://redis.{zone}:6378/")
    # The static IP and the SSL policy the Ingress names exist.
    local = tf_locals(hcl, PROD_ENV / "main.tf")
    ip = one(hcl, "google_compute_global_address", "gateway").body["name"]
    policy = one(hcl, "google_compute_ssl_policy", "modern").body["name"]
    assert tf_interpolate(ip, {}, local) == values["ingress"]["staticIpName"]
    assert tf_interpolate(policy, {}, local) == values["ingress"]["sslPolicy"]
    # The load balancer firewall rule opens the gateway's port on the nodes.
    assert network_vars["load_balancer_ports"] == [
        str(values.get("services", {}).get("gateway", {}).get("port", 8080))
    ]


def test_models_bucket_name_matches_the_chart(hcl: dict[Path, dict[str, Any]]) -> None:
    values = load_yaml(REPO / "helm" / "ragplatform" / "values-prod.yaml")
    storage = prod_module_call(hcl, "storage")
    prefix = tf_interpolate(storage["name_prefix"], {"project_id": values["gcp"]["projectId"]}, {})
    bucket = values["vllm"]["modelCache"]["gcsfuse"]["bucket"]
    assert bucket == f"{prefix}-models"


@pytest.mark.parametrize("version_file", sorted(TERRAFORM_DIR.rglob("versions.tf")), ids=str)
def test_provider_versions_are_pinned(version_file: Path, hcl: dict[Path, dict[str, Any]]) -> None:
    from tests.infra.conftest import tf_clean

    terraform = tf_clean(hcl[version_file]["terraform"][0])
    assert terraform["required_version"].startswith(">=")
    providers = terraform["required_providers"][0]
    assert "google" in providers
    for spec in providers.values():
        assert "<" in spec["version"], "provider majors are bounded"
