output "index_id" {
  description = "Resource name of the index, projects/<project>/locations/<region>/indexes/<id> (the chart's backends.retrieval.vertex.index: upserts and removes)."
  value       = google_vertex_ai_index.chunks.id
}

output "index_endpoint_id" {
  description = "Resource name of the index endpoint, projects/<project>/locations/<region>/indexEndpoints/<id> (backends.retrieval.vertex.indexEndpoint)."
  value       = google_vertex_ai_index_endpoint.chunks.id
}

output "deployed_index_id" {
  description = "ID of the deployed index (backends.retrieval.vertex.deployedIndexId)."
  value       = google_vertex_ai_index_endpoint_deployed_index.chunks.deployed_index_id
}

output "public_endpoint_domain" {
  description = "Public domain name of the endpoint, where queries go (backends.retrieval.vertex.queryEndpoint); empty for a private endpoint."
  value       = var.public_endpoint ? google_vertex_ai_index_endpoint.chunks.public_endpoint_domain_name : ""
}

output "spare_indexes" {
  description = "The spare indexes, as the chart's backends.retrieval.vertex.spareIndexes takes them."
  value = [
    for key, deployed in google_vertex_ai_index_endpoint_deployed_index.spare : {
      index           = google_vertex_ai_index.spare[key].id
      indexEndpoint   = google_vertex_ai_index_endpoint.chunks.id
      deployedIndexId = deployed.deployed_index_id
      queryEndpoint   = var.public_endpoint ? google_vertex_ai_index_endpoint.chunks.public_endpoint_domain_name : ""
    }
  ]
}
