# Production environment of the RAG platform on GKE. See ../../README.md.

locals {
  name   = "ragplatform"
  labels = { app = "ragplatform", env = "prod" }

  apis = [
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudkms.googleapis.com",
    "cloudtrace.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "dns.googleapis.com",
    "documentai.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "redis.googleapis.com",
    "servicenetworking.googleapis.com",
    "storage.googleapis.com",
  ]

  # Every workload that calls Google APIs from the cluster, with what it may do.
  # Keys are the chart's component names: Google service account rag-<key>, bound to
  # the Kubernetes service account <release>-<key> the chart creates (gcp.workloadIdentity).
  # Resource-level grants (buckets, the Firestore database) follow below; unconditional
  # project roles are only these. gateway and query call no Google API but telemetry.
  telemetry_roles = [
    "roles/cloudtrace.agent",
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
  ]
  workloads = {
    gateway = {
      namespace = var.namespace
      ksa       = "${var.release_name}-gateway"
      roles     = local.telemetry_roles
    }
    query = {
      namespace = var.namespace
      ksa       = "${var.release_name}-query"
      roles     = local.telemetry_roles
    }
    ingestion = {
      namespace = var.namespace
      ksa       = "${var.release_name}-ingestion"
      # Document AI OCR; reads the documents bucket (granted on the bucket below).
      roles = concat(local.telemetry_roles, ["roles/documentai.apiUser"])
    }
    embedding = {
      namespace = var.namespace
      ksa       = "${var.release_name}-embedding"
      # Vertex AI embeddings: predict on the publisher models (aiplatform.endpoints.predict).
      roles = concat(local.telemetry_roles, ["roles/aiplatform.user"])
    }
    retrieval = {
      namespace = var.namespace
      ksa       = "${var.release_name}-retrieval"
      # Vertex AI Vector Search: upsert and remove datapoints, find neighbors (no narrower
      # predefined role covers these). Firestore: roles/datastore.user on the platform's
      # database only, granted by module.firestore.
      roles = concat(local.telemetry_roles, ["roles/aiplatform.user"])
    }
    generation = {
      namespace = var.namespace
      ksa       = "${var.release_name}-generation"
      # Gemini on Vertex AI.
      roles = concat(local.telemetry_roles, ["roles/aiplatform.user"])
    }
    vllm = {
      namespace = var.namespace
      ksa       = "${var.release_name}-vllm"
      # Reads the model weights bucket through Cloud Storage FUSE (granted on the bucket below).
      roles = ["roles/logging.logWriter"]
    }
    metrics-adapter = {
      # custom-metrics-stackdriver-adapter: serves the HPAs' custom metrics from managed Prometheus.
      namespace = "custom-metrics"
      ksa       = "custom-metrics-stackdriver-adapter"
      roles     = ["roles/monitoring.viewer"]
    }
  }
}

resource "google_project_service" "api" {
  for_each           = toset(local.apis)
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

data "google_project" "project" {
  project_id = var.project_id
}

# --- Service agents that use the CMEK keys ---------------------------------------------

data "google_storage_project_service_account" "gcs" {
  project    = var.project_id
  depends_on = [google_project_service.api]
}

resource "google_project_service_identity" "artifactregistry" {
  provider   = google-beta
  project    = var.project_id
  service    = "artifactregistry.googleapis.com"
  depends_on = [google_project_service.api]
}

resource "google_project_service_identity" "aiplatform" {
  provider   = google-beta
  project    = var.project_id
  service    = "aiplatform.googleapis.com"
  depends_on = [google_project_service.api]
}

resource "google_project_service_identity" "firestore" {
  provider   = google-beta
  project    = var.project_id
  service    = "firestore.googleapis.com"
  depends_on = [google_project_service.api]
}

locals {
  project_number = data.google_project.project.number
  agents = {
    gke       = "serviceAccount:service-${local.project_number}@container-engine-robot.iam.gserviceaccount.com"
    compute   = "serviceAccount:service-${local.project_number}@compute-system.iam.gserviceaccount.com"
    redis     = "serviceAccount:service-${local.project_number}@cloud-redis.iam.gserviceaccount.com"
    storage   = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
    ar        = "serviceAccount:${google_project_service_identity.artifactregistry.email}"
    vertex    = "serviceAccount:${google_project_service_identity.aiplatform.email}"
    firestore = "serviceAccount:${google_project_service_identity.firestore.email}"
  }
}

module "kms" {
  source           = "../../modules/kms"
  project_id       = var.project_id
  location         = var.region
  key_ring_name    = "${local.name}-prod"
  protection_level = var.kms_protection_level
  keys = {
    gke-secrets       = { encrypters = [local.agents.gke] }
    node-disks        = { encrypters = [local.agents.compute, local.agents.gke] }
    storage           = { encrypters = [local.agents.storage] }
    redis             = { encrypters = [local.agents.redis] }
    artifact-registry = { encrypters = [local.agents.ar] }
    vertex-ai         = { encrypters = [local.agents.vertex] }
    firestore         = { encrypters = [local.agents.firestore] }
  }
  depends_on = [google_project_service.api]
}

# --- Network ------------------------------------------------------------------------

module "network" {
  source     = "../../modules/network"
  project_id = var.project_id
  region     = var.region
  name       = local.name
  node_tag   = "${local.name}-prod-node"
  depends_on = [google_project_service.api]
}

# --- Cluster ------------------------------------------------------------------------

resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = "rag-gke-nodes"
  display_name = "ragplatform GKE nodes"
  description  = "Least-privilege identity of the GKE nodes (logs, metrics, image pulls)."
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/autoscaling.metricsWriter",
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
  ])
  project = var.project_id
  role    = each.value
  member  = google_service_account.nodes.member
}

module "gke" {
  source                     = "../../modules/gke"
  project_id                 = var.project_id
  name                       = "${local.name}-prod"
  region                     = var.region
  zones                      = var.zones
  gpu_zones                  = var.gpu_zones
  kubernetes_version         = var.kubernetes_version
  network_id                 = module.network.network_id
  subnetwork_id              = module.network.subnetwork_id
  pods_range_name            = module.network.pods_range_name
  services_range_name        = module.network.services_range_name
  master_authorized_networks = var.master_authorized_networks
  rbac_security_group        = var.rbac_security_group
  secrets_kms_key_id         = module.kms.key_ids["gke-secrets"]
  disk_kms_key_id            = module.kms.key_ids["node-disks"]
  node_service_account       = google_service_account.nodes.email
  gpu_pool = {
    name              = "vllm-gpu"
    machine_type      = "g2-standard-8"
    accelerator_type  = "nvidia-l4"
    accelerator_count = 1
    min_node_count    = 0
    max_node_count    = var.gpu_pool_max_nodes
    disk_size_gb      = 200
    spot              = false
  }
  labels     = local.labels
  depends_on = [module.kms]
}

# --- Images -------------------------------------------------------------------------

module "artifact_registry" {
  source        = "../../modules/artifact-registry"
  project_id    = var.project_id
  location      = var.region
  repository_id = local.name
  kms_key_id    = module.kms.key_ids["artifact-registry"]
  readers       = [google_service_account.nodes.member]
  depends_on    = [module.kms]
}

# --- Data ---------------------------------------------------------------------------

module "storage" {
  source      = "../../modules/storage"
  project_id  = var.project_id
  location    = var.region
  name_prefix = "${var.project_id}-rag"
  kms_key_id  = module.kms.key_ids["storage"]
  depends_on  = [module.kms]
}

module "redis" {
  source            = "../../modules/redis"
  project_id        = var.project_id
  region            = var.region
  name              = "${local.name}-cache"
  network_id        = module.network.network_id
  reserved_ip_range = module.network.private_service_access_range_name
  memory_size_gb    = var.redis_memory_gb
  kms_key_id        = module.kms.key_ids["redis"]
  depends_on        = [module.network, module.kms]
}

# redis.rag.internal -> Memorystore: the chart's redis.external.url stays stable.
resource "google_dns_record_set" "redis" {
  project      = var.project_id
  managed_zone = module.network.internal_zone_name
  name         = "redis.${module.network.internal_dns_name}"
  type         = "A"
  ttl          = 300
  rrdatas      = [module.redis.host]
}

# The retrieval service's vertex backend: vectors in Vector Search (queried on the
# endpoint's public domain name), chunk text and the document registry in Firestore.
module "vector_search" {
  source           = "../../modules/vector-search"
  project_id       = var.project_id
  project_number   = local.project_number
  region           = var.region
  name             = "ragplatform"
  public_endpoint  = true
  dimensions       = var.vector_dimensions
  spare_dimensions = var.vector_spare_dimensions
  kms_key_id       = module.kms.key_ids["vertex-ai"]
  depends_on       = [module.kms]
}

module "firestore" {
  source      = "../../modules/firestore"
  project_id  = var.project_id
  location    = var.region
  database_id = var.firestore_database
  kms_key_id  = module.kms.key_ids["firestore"]
  # retrieval: chunk text and the registry; ingestion: import jobs.
  users = {
    retrieval = module.workload_identity.members["retrieval"]
    ingestion = module.workload_identity.members["ingestion"]
  }
  depends_on = [module.kms]
}

# --- Workload identities ------------------------------------------------------------

module "workload_identity" {
  source         = "../../modules/workload-identity"
  project_id     = var.project_id
  account_prefix = "rag-"
  workloads      = local.workloads
  depends_on     = [module.gke]
}

resource "google_storage_bucket_iam_member" "ingestion_documents" {
  bucket = module.storage.documents_bucket
  role   = "roles/storage.objectViewer"
  member = module.workload_identity.members["ingestion"]
}

resource "google_storage_bucket_iam_member" "vllm_models" {
  bucket = module.storage.models_bucket
  role   = "roles/storage.objectViewer"
  member = module.workload_identity.members["vllm"]
}

# --- Edge ---------------------------------------------------------------------------

# The REST gateway's address (the chart's ingress.staticIpName) and TLS policy
# (ingress.sslPolicy).
resource "google_compute_global_address" "gateway" {
  project = var.project_id
  name    = "${local.name}-gateway-ip"
}

resource "google_compute_ssl_policy" "modern" {
  project         = var.project_id
  name            = "${local.name}-modern-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}
