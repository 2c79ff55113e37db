# Customer-managed encryption keys (CMEK): one key per consumer, rotated
# automatically, never destroyed by Terraform, usable only by the service agent(s)
# of the service it protects.

resource "google_kms_key_ring" "ring" {
  project  = var.project_id
  name     = var.key_ring_name
  location = var.location
}

resource "google_kms_crypto_key" "key" {
  for_each        = var.keys
  name            = each.key
  key_ring        = google_kms_key_ring.ring.id
  purpose         = "ENCRYPT_DECRYPT"
  rotation_period = var.rotation_period

  version_template {
    algorithm        = "GOOGLE_SYMMETRIC_ENCRYPTION"
    protection_level = var.protection_level
  }

  lifecycle {
    prevent_destroy = true
  }
}

locals {
  key_members = merge([
    for key, spec in var.keys : {
      for member in spec.encrypters : "${key}|${member}" => { key = key, member = member }
    }
  ]...)
}

resource "google_kms_crypto_key_iam_member" "encrypter" {
  for_each      = local.key_members
  crypto_key_id = google_kms_crypto_key.key[each.value.key].id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value.member
}
