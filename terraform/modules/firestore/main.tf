# Firestore (native mode) for the retrieval service's Vertex AI backend: the chunk
# text and the document registry next to the vectors in Vector Search. A named
# database in the region, CMEK, point-in-time recovery, delete protection; the
# users get roles/datastore.user on this database only (an IAM condition on its name).

resource "google_firestore_database" "rag" {
  project                           = var.project_id
  name                              = var.database_id
  location_id                       = var.location
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # `terraform destroy` leaves the database (and its data) in place.
  deletion_policy = "ABANDON"

  cmek_config {
    kms_key_name = var.kms_key_id
  }
}

resource "google_project_iam_member" "user" {
  for_each = var.users
  project  = var.project_id
  role     = "roles/datastore.user"
  member   = each.value

  condition {
    title       = "only-${var.database_id}"
    description = "Firestore database ${var.database_id} only."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${var.database_id}\""
  }
}
