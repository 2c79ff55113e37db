output "key_ring_id" {
  description = "ID of the key ring."
  value       = google_kms_key_ring.ring.id
}

output "key_ids" {
  description = "Key IDs by name (projects/.../cryptoKeys/NAME), for CMEK settings."
  value       = { for name, key in google_kms_crypto_key.key : name => key.id }
}

output "encrypter_bindings" {
  description = "IDs of the encrypter grants; depend on them before creating encrypted resources."
  value       = [for b in google_kms_crypto_key_iam_member.encrypter : b.id]
}
