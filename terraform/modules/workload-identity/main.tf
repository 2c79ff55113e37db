# One Google service account per workload, each bound to exactly one Kubernetes
# service account (Workload Identity) and holding only the roles it needs.

resource "google_service_account" "workload" {
  for_each     = var.workloads
  project      = var.project_id
  account_id   = "${var.account_prefix}${each.key}"
  display_name = "ragplatform ${each.key}"
  description  = "Workload Identity of ${each.value.namespace}/${each.value.ksa}."
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each           = var.workloads
  service_account_id = google_service_account.workload[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${each.value.namespace}/${each.value.ksa}]"
}

locals {
  grants = merge([
    for name, w in var.workloads : {
      for role in w.roles : "${name}|${role}" => { workload = name, role = role }
    }
  ]...)
}

resource "google_project_iam_member" "role" {
  for_each = local.grants
  project  = var.project_id
  role     = each.value.role
  member   = google_service_account.workload[each.value.workload].member
}
