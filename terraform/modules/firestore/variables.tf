variable "project_id" {
  description = "Project that owns the database."
  type        = string
}

variable "location" {
  description = "Location of the database: the region of the platform (Vertex AI, the cluster)."
  type        = string
}

variable "database_id" {
  description = "Database ID (the chart's backends.retrieval.firestore.database)."
  type        = string
  default     = "ragplatform"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.database_id))
    error_message = "database_id: 4-63 lowercase letters, digits or hyphens, starting with a letter (\"(default)\" is not managed here)."
  }
}

variable "kms_key_id" {
  description = "CMEK key encrypting the database (in the database's location)."
  type        = string
}

variable "users" {
  description = "IAM members granted roles/datastore.user on this database only, by a static key (the workload), e.g. { retrieval = \"serviceAccount:...\" }."
  type        = map(string)
  default     = {}
}
