variable "project_id" {
  description = "Project of the Google service accounts and of the cluster's workload pool."
  type        = string
}

variable "account_prefix" {
  description = "Prefix of every Google service account ID (<prefix><workload>); the chart's gcp.workloadIdentity.serviceAccountPrefix."
  type        = string
  default     = "rag-"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,12}$", var.account_prefix))
    error_message = "account_prefix: lowercase letters, digits and hyphens, at most 13 characters."
  }
}

variable "workloads" {
  description = "One Google service account per workload (the key), bound to the Kubernetes service account namespace/ksa through Workload Identity and granted the project roles listed (least privilege: grant resource-level roles outside, on the resource)."
  type = map(object({
    namespace = string
    ksa       = string
    roles     = list(string)
  }))
  validation {
    condition     = alltrue([for k, w in var.workloads : can(regex("^[a-z][a-z0-9-]{2,29}$", k))])
    error_message = "Workload keys become service account IDs: 3-30 lowercase letters, digits or hyphens."
  }
  validation {
    condition = alltrue(flatten([
      for w in values(var.workloads) : [
        for r in w.roles : !contains(["roles/owner", "roles/editor", "roles/viewer"], r)
      ]
    ]))
    error_message = "Basic roles (owner, editor, viewer) are never granted to workloads."
  }
}
