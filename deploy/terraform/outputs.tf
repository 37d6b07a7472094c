output "code_bucket" {
  description = "Where `poolcast deploy upload` and Cloud Build put versions/<sha>/ and latest/."
  value       = google_storage_bucket.spark_code.name
}

output "staging_bucket" {
  description = "Staging bucket of the batches (objects deleted after 7 days)."
  value       = google_storage_bucket.spark_staging.name
}

output "models_bucket" {
  description = "Forecast model artifacts of the batches (versioned, kept)."
  value       = google_storage_bucket.poolcast_models.name
}

output "model_dir" {
  description = "POOLCAST_MODEL_DIR of the batches: use it with `poolcast forecast --model` and `poolcast report`."
  value       = "gs://${google_storage_bucket.poolcast_models.name}/models"
}

output "dataproc_service_account" {
  description = "Service account the batches run as."
  value       = google_service_account.dataproc.email
}

output "dataproc_subnetwork" {
  description = "Subnetwork of the batches (Private Google Access on)."
  value       = google_compute_subnetwork.dataproc.id
}

output "db_password_secret" {
  description = "Add the DB password as a version of this secret."
  value       = google_secret_manager_secret.db_password.id
}

output "workflow" {
  description = "The pipeline workflow."
  value       = google_workflows_workflow.pipeline.id
}
