variable "project_id" {
  description = "Project that owns the buckets."
  type        = string
}

variable "location" {
  description = "Location of the buckets (the cluster's region keeps reads local)."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of the bucket names (bucket names are global: include the project)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{2,40}$", var.name_prefix))
    error_message = "name_prefix: 3-41 lowercase letters, digits or hyphens."
  }
}

variable "kms_key_id" {
  description = "CMEK key encrypting every object."
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept before deletion."
  type        = number
  default     = 30
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete non-empty buckets (never in production)."
  type        = bool
  default     = false
}
