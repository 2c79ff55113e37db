output "host" {
  description = "Private IP of the primary endpoint."
  value       = google_redis_instance.cache.host
}

output "port" {
  description = "Port of the primary endpoint (6378: TLS)."
  value       = google_redis_instance.cache.port
}

output "auth_string" {
  description = "AUTH string; store it in the Secret the chart reads (redis.external.auth)."
  value       = google_redis_instance.cache.auth_string
  sensitive   = true
}

output "server_ca_cert" {
  description = "CA certificate of the TLS endpoint (redis.external.ca)."
  value       = google_redis_instance.cache.server_ca_certs[0].cert
  sensitive   = true
}
