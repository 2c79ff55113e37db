output "emails" {
  description = "Google service account email by workload (the value of the KSA annotation iam.gke.io/gcp-service-account)."
  value       = { for k, sa in google_service_account.workload : k => sa.email }
}

output "members" {
  description = "IAM member string (serviceAccount:EMAIL) by workload, for resource-level grants."
  value       = { for k, sa in google_service_account.workload : k => sa.member }
}
