output "name" {
  description = "Cluster name."
  value       = google_container_cluster.cluster.name
}

output "id" {
  description = "Cluster ID."
  value       = google_container_cluster.cluster.id
}

output "dns_endpoint" {
  description = "DNS endpoint of the control plane (IAM-authenticated): gcloud container clusters get-credentials --dns-endpoint."
  value       = google_container_cluster.cluster.control_plane_endpoints_config[0].dns_endpoint_config[0].endpoint
}

output "workload_pool" {
  description = "Workload Identity pool."
  value       = google_container_cluster.cluster.workload_identity_config[0].workload_pool
}

output "gpu_pool_name" {
  description = "Name of the GPU node pool (label cloud.google.com/gke-nodepool)."
  value       = google_container_node_pool.gpu.name
}
