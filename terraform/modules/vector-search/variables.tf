variable "project_id" {
  description = "Project that owns the index."
  type        = string
}

variable "project_number" {
  description = "Number of the project (the index endpoint names its network by project number)."
  type        = string
  validation {
    condition     = can(regex("^[0-9]+$", var.project_number))
    error_message = "project_number is digits only."
  }
}

variable "region" {
  description = "Region of the index and its endpoint (Vertex AI location)."
  type        = string
}

variable "name" {
  description = "Prefix of the display names and of the deployed index ID."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,40}$", var.name))
    error_message = "name: lowercase letters, digits and underscores, starting with a letter."
  }
}

variable "public_endpoint" {
  description = "Whether the index endpoint is public (queried on its public domain name, what the retrieval service's RAG_VECTOR_SEARCH_QUERY_ENDPOINT expects) or private (VPC peering: network_name and reserved_ip_range)."
  type        = bool
  default     = true
}

variable "network_name" {
  description = "VPC peered with Vertex AI (private service access) from which a private endpoint is queried; unused when public_endpoint is true."
  type        = string
  default     = ""
  validation {
    condition     = var.network_name == "" || can(regex("^[a-z][-a-z0-9]{0,61}[a-z0-9]$", var.network_name))
    error_message = "network_name is a VPC name (or empty with a public endpoint)."
  }
}

variable "spare_dimensions" {
  description = "Dimensions of spare indexes to create and deploy beside the live one, for a re-index to another embedding model (`ragctl reindex`, one generation per spare); empty: none."
  type        = list(number)
  default     = []
  validation {
    condition     = alltrue([for d in var.spare_dimensions : d >= 1 && d <= 4096])
    error_message = "spare_dimensions must be between 1 and 4096 each."
  }
}

variable "reserved_ip_range" {
  description = "Name of the private service access range a private endpoint's deployed index takes its address from; unused when public_endpoint is true."
  type        = string
  default     = ""
}

variable "dimensions" {
  description = "Vector dimension; must match the embedder's output (the chart's backends.retrieval.dimension)."
  type        = number
  default     = 768
  validation {
    condition     = var.dimensions >= 1 && var.dimensions <= 4096
    error_message = "dimensions must be between 1 and 4096."
  }
}

variable "kms_key_id" {
  description = "CMEK key encrypting the index and the endpoint."
  type        = string
}

variable "min_replicas" {
  description = "Minimum replicas of the deployed index."
  type        = number
  default     = 2
  validation {
    condition     = var.min_replicas >= 1
    error_message = "min_replicas must be at least 1."
  }
}

variable "max_replicas" {
  description = "Maximum replicas of the deployed index."
  type        = number
  default     = 4
}

variable "machine_type" {
  description = "Machine type serving the deployed index."
  type        = string
  default     = "e2-standard-16"
}
