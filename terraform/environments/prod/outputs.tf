output "cluster_name" {
  description = "GKE cluster name."
  value       = module.gke.name
}

output "get_credentials" {
  description = "Command that configures kubectl through the cluster's IAM-guarded DNS endpoint."
  value       = "gcloud container clusters get-credentials ${module.gke.name} --region ${var.region} --project ${var.project_id} --dns-endpoint"
}

output "image_registry" {
  description = "Registry of the platform images: skaffold --default-repo, the chart's global.imageRegistry."
  value       = module.artifact_registry.images_url
}

output "dockerhub_cache" {
  description = "Docker Hub pull-through cache for the third-party images."
  value       = module.artifact_registry.dockerhub_url
}

output "documents_bucket" {
  description = "Bucket of the source documents (gs:// URIs for ingestion)."
  value       = module.storage.documents_bucket
}

output "models_bucket" {
  description = "Bucket of the model weights (vllm.modelCache.gcsfuse.bucket)."
  value       = module.storage.models_bucket
}

output "redis_url" {
  description = "URL of Memorystore for the chart (redis.external.url)."
  value       = "rediss://redis.${trimsuffix(module.network.internal_dns_name, ".")}:${module.redis.port}/0"
}

output "redis_auth_string" {
  description = "Memorystore AUTH string: put it in the Secret named by redis.external.auth."
  value       = module.redis.auth_string
  sensitive   = true
}

output "redis_server_ca" {
  description = "CA certificate of Memorystore's TLS endpoint: put it in the Secret named by redis.external.ca."
  value       = module.redis.server_ca_cert
  sensitive   = true
}

output "workload_service_accounts" {
  description = "Google service account of each workload (Workload Identity)."
  value       = module.workload_identity.emails
}

output "vector_search" {
  description = "Vertex AI Vector Search: index and endpoint resource names, deployed index ID, the endpoint's public domain name (queries), project and location."
  value = {
    project                = var.project_id
    location               = var.region
    index                  = module.vector_search.index_id
    index_endpoint         = module.vector_search.index_endpoint_id
    deployed_index_id      = module.vector_search.deployed_index_id
    public_endpoint_domain = module.vector_search.public_endpoint_domain
  }
}

output "firestore_database" {
  description = "ID of the Firestore database of the chunk text and the document registry (backends.retrieval.firestore.database)."
  value       = module.firestore.database_id
}

output "gateway_ip" {
  description = "Global static IP of the REST gateway (point the API's DNS name at it)."
  value       = google_compute_global_address.gateway.address
}

output "helm_values" {
  description = "Values of the chart that come from this environment, keyed as in values.yaml (pass after values-prod.yaml: terraform output -raw helm_values > values-gcp.yaml)."
  value = yamlencode({
    global = { imageRegistry = module.artifact_registry.images_url }
    gcp    = { projectId = var.project_id, region = var.region }
    backends = {
      retrieval = {
        dimension = var.vector_dimensions
        vertex = {
          index           = module.vector_search.index_id
          indexEndpoint   = module.vector_search.index_endpoint_id
          deployedIndexId = module.vector_search.deployed_index_id
          queryEndpoint   = module.vector_search.public_endpoint_domain
          spareIndexes    = module.vector_search.spare_indexes
        }
        firestore = { database = module.firestore.database_id }
      }
      embedding = { vertex = { outputDimensionality = var.vector_dimensions } }
    }
    vllm = { modelCache = { gcsfuse = { bucket = module.storage.models_bucket } } }
    redis = {
      external = {
        url  = "rediss://redis.${trimsuffix(module.network.internal_dns_name, ".")}:${module.redis.port}/0"
        cidr = module.network.private_service_access_cidr
      }
    }
    ingress = {
      staticIpName = google_compute_global_address.gateway.name
      sslPolicy    = google_compute_ssl_policy.modern.name
    }
    networkPolicy = { googleApisCidrs = [module.network.private_googleapis_cidr] }
  })
}
