# The platform's images (immutable tags, CMEK, cleanup) and a remote repository that
# proxies Docker Hub for the third-party images (vLLM, Qdrant, Redis), so private
# nodes pull everything from Artifact Registry.

resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.location
  repository_id = var.repository_id
  description   = "ragplatform service images, built by skaffold."
  format        = "DOCKER"
  mode          = "STANDARD_REPOSITORY"
  kms_key_name  = var.kms_key_id

  docker_config {
    immutable_tags = true
  }

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_tagged_versions
    }
  }
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }
}

resource "google_artifact_registry_repository" "dockerhub" {
  project       = var.project_id
  location      = var.location
  repository_id = "${var.repository_id}-dockerhub"
  description   = "Pull-through cache of Docker Hub (vllm/vllm-openai, qdrant/qdrant, redis)."
  format        = "DOCKER"
  mode          = "REMOTE_REPOSITORY"
  kms_key_name  = var.kms_key_id

  remote_repository_config {
    description = "Docker Hub"
    docker_repository {
      public_repository = "DOCKER_HUB"
    }
  }
}

resource "google_artifact_registry_repository_iam_member" "images_reader" {
  for_each   = toset(var.readers)
  project    = var.project_id
  location   = var.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = each.value
}

resource "google_artifact_registry_repository_iam_member" "dockerhub_reader" {
  for_each   = toset(var.readers)
  project    = var.project_id
  location   = var.location
  repository = google_artifact_registry_repository.dockerhub.name
  role       = "roles/artifactregistry.reader"
  member     = each.value
}
