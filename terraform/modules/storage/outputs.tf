output "documents_bucket" {
  description = "Name of the source documents bucket."
  value       = google_storage_bucket.bucket["documents"].name
}

output "models_bucket" {
  description = "Name of the model weights bucket (the chart's vllm.modelCache.gcsfuse.bucket)."
  value       = google_storage_bucket.bucket["models"].name
}

output "access_logs_bucket" {
  description = "Name of the access logs bucket."
  value       = google_storage_bucket.access_logs.name
}
