# Vertex AI Vector Search: a streaming-update index (chunks are upserted and deleted
# as documents change), an index endpoint and the index deployed on it. CMEK on the
# index and the endpoint.
#
# The endpoint is public by default: the retrieval service sends find_neighbors to
# its public domain name (IAM-authenticated, TLS) and upserts/removes to the Vertex AI
# API. public_endpoint = false makes it a private endpoint on the VPC (peering over
# the private service access range) instead.
#
# The retrieval service stores L2-normalised dense vectors (DOT_PRODUCT_DISTANCE on
# UNIT_L2_NORM is cosine similarity) plus sparse BM25 vectors on the same datapoints
# (hybrid search). Sparse embeddings need no index setting: the provider's
# metadata.config has none, and Vector Search accepts sparse_embedding on the
# datapoints of a dense index.

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

resource "google_vertex_ai_index_endpoint" "chunks" {
  # checkov:skip=CKV2_GCP_34:The retrieval service queries the endpoint's public domain name (RAG_VECTOR_SEARCH_QUERY_ENDPOINT); every call is IAM-authenticated (aiplatform.user on the retrieval service account only) over TLS, and public_endpoint = false gives the private (VPC peering) endpoint.
  project                 = var.project_id
  region                  = var.region
  display_name            = "${var.name}_endpoint"
  description             = var.public_endpoint ? "Public endpoint of the chunk index (IAM-authenticated)." : "Private endpoint of the chunk index (VPC peering)."
  network                 = var.public_endpoint ? null : "projects/${var.project_number}/global/networks/${var.network_name}"
  public_endpoint_enabled = var.public_endpoint

  lifecycle {
    precondition {
      condition     = var.public_endpoint || (var.network_name != "" && var.reserved_ip_range != "")
      error_message = "A private endpoint (public_endpoint = false) needs network_name and reserved_ip_range."
    }
  }

  encryption_spec {
    kms_key_name = var.kms_key_id
  }
}

resource "google_vertex_ai_index_endpoint_deployed_index" "chunks" {
  index_endpoint     = google_vertex_ai_index_endpoint.chunks.id
  deployed_index_id  = "${var.name}_chunks"
  display_name       = "${var.name}_chunks"
  index              = google_vertex_ai_index.chunks.id
  reserved_ip_ranges = var.public_endpoint ? null : [var.reserved_ip_range]

  dedicated_resources {
    min_replica_count = var.min_replicas
    max_replica_count = var.max_replicas
    machine_spec {
      machine_type = var.machine_type
    }
  }
}

# Spare indexes, one per element of spare_dimensions, deployed on the same endpoint:
# a re-index to another embedding model (`ragctl reindex`) fills one while the live
# index keeps serving (an index's dimension is fixed for life). Each deployed spare
# has replicas of its own, so keep the list empty until a re-index is planned.
resource "google_vertex_ai_index" "spare" {
  for_each            = { for i, dimensions in var.spare_dimensions : tostring(i + 1) => dimensions }
  project             = var.project_id
  region              = var.region
  display_name        = "${var.name}_chunks_spare_${each.key}"
  description         = "Chunk embeddings of the RAG platform: a generation being built or kept."
  index_update_method = "STREAM_UPDATE"

  metadata {
    config {
      dimensions                  = each.value
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

resource "google_vertex_ai_index_endpoint_deployed_index" "spare" {
  for_each           = google_vertex_ai_index.spare
  index_endpoint     = google_vertex_ai_index_endpoint.chunks.id
  deployed_index_id  = "${var.name}_chunks_spare_${each.key}"
  display_name       = "${var.name}_chunks_spare_${each.key}"
  index              = each.value.id
  reserved_ip_ranges = var.public_endpoint ? null : [var.reserved_ip_range]

  dedicated_resources {
    min_replica_count = var.min_replicas
    max_replica_count = var.max_replicas
    machine_spec {
      machine_type = var.machine_type
    }
  }
}

moved {
  from = google_vertex_ai_index_endpoint.private
  to   = google_vertex_ai_index_endpoint.chunks
}
