variable "project_id" {
  description = "Project of the cluster."
  type        = string
}

variable "name" {
  description = "Cluster name."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.name))
    error_message = "name: 2-40 lowercase letters, digits or hyphens."
  }
}

variable "region" {
  description = "Region of the (regional) cluster."
  type        = string
}

variable "zones" {
  description = "Zones of the node pools; the GPU pool uses gpu_zones."
  type        = list(string)
  validation {
    condition     = length(var.zones) >= 2
    error_message = "At least two zones: the platform runs across zones."
  }
}

variable "kubernetes_version" {
  description = "Minimum Kubernetes minor version of the control plane (the release channel upgrades within it); the chart is validated against it."
  type        = string
  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version is a minor version such as 1.35."
  }
}

variable "release_channel" {
  description = "GKE release channel."
  type        = string
  default     = "REGULAR"
  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "network_id" {
  description = "VPC of the cluster."
  type        = string
}

variable "subnetwork_id" {
  description = "Subnet of the nodes."
  type        = string
}

variable "pods_range_name" {
  description = "Secondary range of the Pods."
  type        = string
}

variable "services_range_name" {
  description = "Secondary range of the Services."
  type        = string
}

variable "master_ipv4_cidr_block" {
  description = "/28 range of the control plane's private endpoint."
  type        = string
  default     = "172.16.0.0/28"
  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr_block, 0)) && endswith(var.master_ipv4_cidr_block, "/28")
    error_message = "master_ipv4_cidr_block must be a /28."
  }
}

variable "master_authorized_networks" {
  description = "Internal ranges allowed to reach the control plane's private IP endpoint (e.g. a bastion or a Cloud Build private pool). Operators outside use the IAM-guarded DNS endpoint."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  validation {
    condition     = alltrue([for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0)) && n.cidr_block != "0.0.0.0/0"])
    error_message = "Each entry needs a CIDR block, and 0.0.0.0/0 is never authorized."
  }
}

variable "rbac_security_group" {
  description = "Google Group that holds the groups used in Kubernetes RBAC (Google Groups for RBAC): gke-security-groups@<your domain>."
  type        = string
  validation {
    condition     = can(regex("^gke-security-groups@[a-z0-9.-]+$", var.rbac_security_group))
    error_message = "rbac_security_group must be gke-security-groups@<domain>."
  }
}

variable "secrets_kms_key_id" {
  description = "CMEK key of the application-layer Secret encryption in etcd."
  type        = string
}

variable "disk_kms_key_id" {
  description = "CMEK key of the node boot disks."
  type        = string
}

variable "node_service_account" {
  description = "Email of the least-privilege service account the nodes run as."
  type        = string
}

variable "general_pool" {
  description = "Node pool of the platform services, Qdrant and the system workloads."
  type = object({
    machine_type   = string
    min_node_count = number
    max_node_count = number
    disk_size_gb   = number
  })
  default = {
    machine_type   = "n2-standard-8"
    min_node_count = 1
    max_node_count = 6
    disk_size_gb   = 100
  }
  validation {
    condition     = var.general_pool.min_node_count >= 1 && var.general_pool.max_node_count >= var.general_pool.min_node_count
    error_message = "general_pool: 1 <= min_node_count <= max_node_count."
  }
}

variable "gpu_pool" {
  description = "GPU node pool of vLLM. Its nodes carry the label cloud.google.com/gke-accelerator=<accelerator_type> and the taint nvidia.com/gpu=present:NoSchedule that the chart's vllm.nodeSelector and tolerations match."
  type = object({
    name              = string
    machine_type      = string
    accelerator_type  = string
    accelerator_count = number
    min_node_count    = number
    max_node_count    = number
    disk_size_gb      = number
    spot              = bool
  })
  default = {
    name              = "vllm-gpu"
    machine_type      = "g2-standard-8"
    accelerator_type  = "nvidia-l4"
    accelerator_count = 1
    min_node_count    = 0
    max_node_count    = 4
    disk_size_gb      = 200
    spot              = false
  }
  validation {
    condition     = var.gpu_pool.accelerator_count >= 1 && var.gpu_pool.max_node_count >= var.gpu_pool.min_node_count
    error_message = "gpu_pool: at least one accelerator per node, and min_node_count <= max_node_count."
  }
}

variable "gpu_zones" {
  description = "Zones with the GPU type available (the GPU pool's node locations)."
  type        = list(string)
  validation {
    condition     = length(var.gpu_zones) >= 1
    error_message = "At least one GPU zone."
  }
}

variable "labels" {
  description = "Labels of the cluster and its nodes."
  type        = map(string)
  default     = {}
}
