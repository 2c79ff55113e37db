output "network_id" {
  description = "ID of the VPC."
  value       = google_compute_network.vpc.id
}

output "network_name" {
  description = "Name of the VPC."
  value       = google_compute_network.vpc.name
}

output "subnetwork_id" {
  description = "ID of the GKE subnet."
  value       = google_compute_subnetwork.gke.id
}

output "pods_range_name" {
  description = "Secondary range name for Pods."
  value       = "pods"
}

output "services_range_name" {
  description = "Secondary range name for Services."
  value       = "services"
}

output "private_service_access_range_name" {
  description = "Name of the private service access range (Memorystore reserved_ip_range, Vector Search)."
  value       = google_compute_global_address.private_service_access.name
}

output "private_service_access_cidr" {
  description = "CIDR of the private service access range (the chart's redis.external.cidr)."
  value       = var.private_service_access_cidr
}

output "private_service_access_connection" {
  description = "The peering connection; depend on it before creating managed services."
  value       = google_service_networking_connection.private_service_access.id
}

output "private_googleapis_cidr" {
  description = "Range of private.googleapis.com (the chart's networkPolicy.googleApisCidrs)."
  value       = local.private_googleapis_cidr
}

output "internal_zone_name" {
  description = "Managed zone name of the internal DNS zone."
  value       = google_dns_managed_zone.internal.name
}

output "internal_dns_name" {
  description = "DNS name of the internal zone, with the trailing dot."
  value       = google_dns_managed_zone.internal.dns_name
}
