variable "project_id" {
  description = "Project that owns the instance."
  type        = string
}

variable "region" {
  description = "Region of the instance (the cluster's)."
  type        = string
}

variable "name" {
  description = "Instance ID."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.name))
    error_message = "name: 2-40 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "network_id" {
  description = "VPC the instance is reachable from (private service access)."
  type        = string
}

variable "reserved_ip_range" {
  description = "Name of the private service access range the instance takes its address from."
  type        = string
}

variable "memory_size_gb" {
  description = "Memory of the instance, in GiB (caches only: answers and embeddings)."
  type        = number
  default     = 5
  validation {
    condition     = var.memory_size_gb >= 1 && var.memory_size_gb <= 300
    error_message = "memory_size_gb must be between 1 and 300."
  }
}

variable "redis_version" {
  description = "Redis version of Memorystore."
  type        = string
  default     = "REDIS_7_2"
  validation {
    condition     = can(regex("^REDIS_[0-9]+(_[0-9]+)?$", var.redis_version))
    error_message = "redis_version looks like REDIS_7_2."
  }
}

variable "kms_key_id" {
  description = "CMEK key encrypting the instance's data at rest."
  type        = string
}
