# Vertex AI Vector Search: a streaming-update index (chunks are upserted and deleted
# as documents change), a private endpoint reached over VPC peering, and the index
# deployed on it. CMEK on the index and the endpoint.

resource "google_vertex_ai_index" "chunks" {
  project             = var.project_id
  region              = var.region
  display_name        = "${var.name}_chunks"
  description         = "Chunk embeddings of the RAG platform."
  index_update_method = "STREAM_UPDATE"

  metadata {
    config {
      dimensions                  = var.dimensions
      approximate_neighbors_count = 150
      distance_measure_type       = "DOT_PRODUCT_DISTANCE"
      feature_norm_type           = "UNIT_L2_NORM"
      shard_size                  = "SHARD_SIZE_SMALL"

      algorithm_config {
        tree_ah_config {
          leaf_node_embedding_count    = 1000
          leaf_nodes_to_search_percent = 10
        }
      }
    }
  }

  encryption_spec {
    kms_key_name = var.kms_key_id
  }
}

resource "google_vertex_ai_index_endpoint" "private" {
  project                 = var.project_id
  region                  = var.region
  display_name            = "${var.name}_endpoint"
  description             = "Private endpoint of the chunk index (VPC peering)."
  network                 = "projects/${var.project_number}/global/networks/${var.network_name}"
  public_endpoint_enabled = false

  encryption_spec {
    kms_key_name = var.kms_key_id
  }
}

resource "google_vertex_ai_index_endpoint_deployed_index" "chunks" {
  index_endpoint     = google_vertex_ai_index_endpoint.private.id
  deployed_index_id  = "${var.name}_chunks"
  display_name       = "${var.name}_chunks"
  index              = google_vertex_ai_index.chunks.id
  reserved_ip_ranges = [var.reserved_ip_range]

  dedicated_resources {
    min_replica_count = var.min_replicas
    max_replica_count = var.max_replicas
    machine_spec {
      machine_type = var.machine_type
    }
  }
}
