variable "project_id" {
  description = "Project that owns the repositories."
  type        = string
}

variable "location" {
  description = "Region of the repositories (images are pulled from here by the cluster)."
  type        = string
}

variable "repository_id" {
  description = "ID of the repository for the platform images (ragplatform/<service>)."
  type        = string
  default     = "ragplatform"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,62}$", var.repository_id))
    error_message = "repository_id: lowercase letters, digits and hyphens."
  }
}

variable "kms_key_id" {
  description = "CMEK key encrypting the repositories."
  type        = string
}

variable "readers" {
  description = "Members allowed to pull images (the GKE node service account)."
  type        = list(string)
  default     = []
}

variable "keep_tagged_versions" {
  description = "Most recent versions kept per image by the cleanup policy."
  type        = number
  default     = 30
  validation {
    condition     = var.keep_tagged_versions >= 5
    error_message = "keep_tagged_versions must be at least 5 (rollbacks need history)."
  }
}
