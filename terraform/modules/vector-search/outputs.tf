output "index_id" {
  description = "ID of the index."
  value       = google_vertex_ai_index.chunks.id
}

output "index_endpoint_id" {
  description = "ID of the index endpoint (the chart's backends.retrieval.vertex.indexEndpoint)."
  value       = google_vertex_ai_index_endpoint.private.id
}

output "deployed_index_id" {
  description = "ID of the deployed index (backends.retrieval.vertex.deployedIndexId)."
  value       = google_vertex_ai_index_endpoint_deployed_index.chunks.deployed_index_id
}
