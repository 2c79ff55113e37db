variable "project_id" {
  description = "Project that owns the network."
  type        = string
}

variable "region" {
  description = "Region of the subnet, the router and the NAT."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: lowercase letters, digits and hyphens, starting with a letter, at most 31 characters."
  }
}

variable "nodes_cidr" {
  description = "Primary range of the GKE subnet (node addresses)."
  type        = string
  default     = "10.10.0.0/20"
  validation {
    condition     = can(cidrhost(var.nodes_cidr, 0))
    error_message = "nodes_cidr must be a CIDR block."
  }
}

variable "pods_cidr" {
  description = "Secondary range for Pod addresses (VPC-native cluster)."
  type        = string
  default     = "10.20.0.0/14"
  validation {
    condition     = can(cidrhost(var.pods_cidr, 0))
    error_message = "pods_cidr must be a CIDR block."
  }
}

variable "services_cidr" {
  description = "Secondary range for Service (ClusterIP) addresses."
  type        = string
  default     = "10.24.0.0/20"
  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be a CIDR block."
  }
}

variable "private_service_access_cidr" {
  description = "Range allocated to Google managed services over private service access (Memorystore, Vertex AI Vector Search). The chart's NetworkPolicies allow Redis egress to it (redis.external.cidr)."
  type        = string
  default     = "10.60.0.0/16"
  validation {
    condition     = can(cidrhost(var.private_service_access_cidr, 0)) && tonumber(split("/", var.private_service_access_cidr)[1]) <= 24
    error_message = "private_service_access_cidr must be a CIDR block of /24 or larger."
  }
}

variable "internal_dns_name" {
  description = "Private DNS zone for stable names of managed services (redis.<zone>)."
  type        = string
  default     = "rag.internal."
  validation {
    condition     = endswith(var.internal_dns_name, ".")
    error_message = "internal_dns_name must end with a dot."
  }
}

variable "node_tag" {
  description = "Network tag of the GKE nodes (targets of the load balancer health-check rule)."
  type        = string
}

variable "load_balancer_ports" {
  description = "Ports on the nodes' Pods that Google load balancers health-check and serve (the gateway's 8080)."
  type        = list(string)
  default     = ["8080"]
}
