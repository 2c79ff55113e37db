variable "project_id" {
  description = "Google Cloud project of the environment (the chart's gcp.projectId)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of everything regional: cluster, Memorystore, buckets, KMS keys, Artifact Registry, Vertex AI (the chart's gcp.region). It must offer the GPU type."
  type        = string
  default     = "europe-west4"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region looks like europe-west4."
  }
}

variable "zones" {
  description = "Zones of the general node pool."
  type        = list(string)
  default     = ["europe-west4-a", "europe-west4-b", "europe-west4-c"]
  validation {
    condition     = length(var.zones) >= 2
    error_message = "At least two zones."
  }
}

variable "gpu_zones" {
  description = "Zones of the GPU node pool (where the GPU type is offered)."
  type        = list(string)
  default     = ["europe-west4-a", "europe-west4-b"]
}

variable "kubernetes_version" {
  description = "Minimum Kubernetes minor version of the cluster; tests/infra validates the rendered chart against this version."
  type        = string
  default     = "1.35"
  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version is a minor version such as 1.35."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the release (Workload Identity binds <namespace>/<service account>)."
  type        = string
  default     = "ragplatform"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS label."
  }
}

variable "release_name" {
  description = "Helm release name; the chart names each Kubernetes service account <release>-<component>."
  type        = string
  default     = "ragplatform"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS label."
  }
}

variable "master_authorized_networks" {
  description = "Internal ranges allowed to reach the control plane's private IP endpoint."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = [{
    cidr_block   = "10.10.0.0/20"
    display_name = "gke-subnet"
  }]
  validation {
    condition     = alltrue([for n in var.master_authorized_networks : n.cidr_block != "0.0.0.0/0"])
    error_message = "0.0.0.0/0 is never authorized."
  }
}

variable "rbac_security_group" {
  description = "gke-security-groups@<your domain>: the Google Group whose member groups can be used in RBAC bindings."
  type        = string
  validation {
    condition     = can(regex("^gke-security-groups@[a-z0-9.-]+$", var.rbac_security_group))
    error_message = "rbac_security_group must be gke-security-groups@<domain>."
  }
}

variable "gpu_pool_max_nodes" {
  description = "Upper bound of the GPU pool (one L4 per node; vLLM runs one replica per GPU)."
  type        = number
  default     = 4
  validation {
    condition     = var.gpu_pool_max_nodes >= 1 && var.gpu_pool_max_nodes <= 32
    error_message = "gpu_pool_max_nodes must be between 1 and 32."
  }
}

variable "redis_memory_gb" {
  description = "Memory of the Memorystore instance, in GiB."
  type        = number
  default     = 5
  validation {
    condition     = var.redis_memory_gb >= 1
    error_message = "redis_memory_gb must be at least 1."
  }
}

variable "vector_dimensions" {
  description = "Embedding dimension of Vector Search; the chart's backends.retrieval.dimension and backends.embedding.vertex.outputDimensionality."
  type        = number
  default     = 768
  validation {
    condition     = contains([128, 256, 768, 1536, 3072], var.vector_dimensions)
    error_message = "vector_dimensions must be an output size gemini-embedding-001 offers (128, 256, 768, 1536, 3072)."
  }
}

variable "vector_spare_dimensions" {
  description = "Dimensions of spare Vector Search indexes for a re-index to another embedding model (docs/embedding.md); each costs its replicas, so add one only for a planned re-index."
  type        = list(number)
  default     = []
}

variable "kms_protection_level" {
  description = "Protection level of the CMEK keys: SOFTWARE or HSM."
  type        = string
  default     = "SOFTWARE"
  validation {
    condition     = contains(["SOFTWARE", "HSM"], var.kms_protection_level)
    error_message = "kms_protection_level must be SOFTWARE or HSM."
  }
}

variable "firestore_database" {
  description = "ID of the Firestore database holding the chunk text and the document registry (the chart's backends.retrieval.firestore.database)."
  type        = string
  default     = "ragplatform"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database: 4-63 lowercase letters, digits or hyphens, starting with a letter."
  }
}
