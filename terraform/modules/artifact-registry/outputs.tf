output "images_url" {
  description = "Registry prefix of the platform images (the chart's global.imageRegistry, skaffold's default-repo)."
  value       = "${var.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "dockerhub_url" {
  description = "Registry prefix of the Docker Hub pull-through cache."
  value       = "${var.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.dockerhub.repository_id}"
}
