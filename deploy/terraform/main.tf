# poolcast on Dataproc Serverless (plan Phase 1, with ERRATA.md's fixes): three buckets, a batch
# service account with least privilege (bucket- and secret-level grants, no project-wide storage
# role), a subnetwork with Private Google Access, the workflow and its schedule.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  services = [
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "dataproc.googleapis.com",
    "logging.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "workflowexecutions.googleapis.com",
    "workflows.googleapis.com",
  ]
  network_self_link = var.network != "" ? var.network : google_compute_network.vpc[0].self_link
  cloudbuild_member = var.cloudbuild_service_account != "" ? "serviceAccount:${var.cloudbuild_service_account}" : "serviceAccount:${data.google_project.this.number}@cloudbuild.gserviceaccount.com"
  cloud_run_jobs    = toset(concat(var.cloud_run_jobs_ingest, var.cloud_run_jobs_middle, var.cloud_run_jobs_final))
}

resource "google_project_service" "enabled" {
  for_each = toset(local.services)

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# --- storage ---------------------------------------------------------------------------------

# Spark staging and temp files of the batches: deleted after 7 days.
resource "google_storage_bucket" "spark_staging" {
  #checkov:skip=CKV_GCP_62:Access logs of a scratch bucket whose objects live 7 days would cost more than they tell; Data Access audit logs cover reads if needed.
  #checkov:skip=CKV_GCP_78:Versioning a scratch bucket with a 7-day delete rule would only keep deleted temp files around longer.
  name                        = "${var.project_id}-spark-staging"
  location                    = var.region
  force_destroy               = true
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

# Versioned code: versions/<sha>/... written once by Cloud Build, latest/MANIFEST.json points at one.
resource "google_storage_bucket" "spark_code" {
  #checkov:skip=CKV_GCP_62:Writes come only from Cloud Build and are in its build logs; Data Access audit logs cover reads if needed.
  name                        = "${var.project_id}-spark-code"
  location                    = var.region
  force_destroy               = false
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  # Object versioning protects latest/MANIFEST.json and the versions from overwrites and
  # deletes; old generations of an object are kept 90 days.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 90
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

# Forecast model artifacts the batches save (POOLCAST_MODEL_DIR = gs://<this bucket>/models): they
# must outlive the batch for the daily mode to reuse them, and are kept for audit and
# `poolcast report`, so no age rule on live objects.
resource "google_storage_bucket" "poolcast_models" {
  #checkov:skip=CKV_GCP_62:Writes come only from the forecast batches and are recorded in pipeline_runs; Data Access audit logs cover reads if needed.
  name                        = "${var.project_id}-poolcast-models"
  location                    = var.region
  force_destroy               = false
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  # An overwritten or deleted artifact stays recoverable for 90 days, then goes.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 90
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

# --- the batch service account: least privilege --------------------------------------------------

resource "google_service_account" "dataproc" {
  project      = var.project_id
  account_id   = "dataproc-spark-sa"
  display_name = "Dataproc Serverless batches of poolcast"
}

# Dataproc Serverless requires this role on the project for the workload's service account.
resource "google_project_iam_member" "dataproc_worker" {
  project = var.project_id
  role    = "roles/dataproc.worker"
  member  = "serviceAccount:${google_service_account.dataproc.email}"
}

resource "google_project_iam_member" "dataproc_cloudsql_client" {
  count = var.use_cloud_sql_connector ? 1 : 0

  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = "serviceAccount:${google_service_account.dataproc.email}"
}

# Staging: read and write, this bucket only (the plan granted objectAdmin on the whole project).
resource "google_storage_bucket_iam_member" "dataproc_staging" {
  bucket = google_storage_bucket.spark_staging.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.dataproc.email}"
}

# Code: read only.
resource "google_storage_bucket_iam_member" "dataproc_code" {
  bucket = google_storage_bucket.spark_code.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.dataproc.email}"
}

# Models: the forecast batch lists, reads and writes its artifacts, in this bucket only.
resource "google_storage_bucket_iam_member" "dataproc_models" {
  bucket = google_storage_bucket.poolcast_models.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.dataproc.email}"
}

# The DB password: the secret is created here, its value is added by hand (see docs/deployment.md),
# and only the batch service account may read it.
resource "google_secret_manager_secret" "db_password" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption is the project's standard; a CMEK key ring is not part of this deployment.
  project   = var.project_id
  secret_id = var.db_password_secret_id

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_iam_member" "dataproc_db_password" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.db_password.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.dataproc.email}"
}

# --- network: internal IPs only, Google APIs through Private Google Access ----------------------

resource "google_compute_network" "vpc" {
  #checkov:skip=CKV2_GCP_18:google_compute_firewall.dataproc_internal is this network's firewall; it attaches through local.network_self_link, which checkov's graph does not follow.
  count = var.network == "" ? 1 : 0

  project                 = var.project_id
  name                    = "poolcast-vpc"
  auto_create_subnetworks = false

  depends_on = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "dataproc" {
  project                  = var.project_id
  name                     = "dataproc-subnet"
  ip_cidr_range            = var.subnet_cidr
  region                   = var.region
  network                  = local.network_self_link
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Dataproc Serverless needs its driver and executors to reach each other on all ports.
resource "google_compute_firewall" "dataproc_internal" {
  project   = var.project_id
  name      = "poolcast-dataproc-internal"
  network   = local.network_self_link
  direction = "INGRESS"

  allow {
    protocol = "all"
  }

  source_ranges = [var.subnet_cidr]
}

# --- the workflow and who may do what in it ---------------------------------------------------------

resource "google_service_account" "workflow" {
  project      = var.project_id
  account_id   = "poolcast-workflow"
  display_name = "poolcast pipeline workflow"
}

# Create, get and cancel batches (Dataproc has no per-batch IAM).
resource "google_project_iam_member" "workflow_dataproc" {
  project = var.project_id
  role    = "roles/dataproc.editor"
  member  = "serviceAccount:${google_service_account.workflow.email}"
}

# Run batches as the batch service account: on that account only, not project-wide.
resource "google_service_account_iam_member" "workflow_acts_as_dataproc" {
  service_account_id = google_service_account.dataproc.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.workflow.email}"
}

# Read latest/MANIFEST.json.
resource "google_storage_bucket_iam_member" "workflow_code" {
  bucket = google_storage_bucket.spark_code.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.workflow.email}"
}

# Run the existing Cloud Run jobs, each granted on the job itself.
resource "google_cloud_run_v2_job_iam_member" "workflow_runs_job" {
  for_each = local.cloud_run_jobs

  project  = var.project_id
  location = var.region
  name     = each.value
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.workflow.email}"
}

# Follow the job executions the connector waits for (read-only).
resource "google_project_iam_member" "workflow_run_viewer" {
  project = var.project_id
  role    = "roles/run.viewer"
  member  = "serviceAccount:${google_service_account.workflow.email}"
}

resource "google_project_iam_member" "workflow_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.workflow.email}"
}

resource "google_workflows_workflow" "pipeline" {
  project         = var.project_id
  name            = "poolcast-pipeline"
  region          = var.region
  description     = "Daily pool ingestion, metrics (Dataproc), forecast (Dataproc) and the steps around them."
  service_account = google_service_account.workflow.id
  call_log_level  = "LOG_ERRORS_ONLY"
  source_contents = file("${path.module}/../workflows/pipeline.yaml")

  user_env_vars = {
    CODE_BUCKET              = google_storage_bucket.spark_code.name
    STAGING_BUCKET           = google_storage_bucket.spark_staging.name
    DATAPROC_SERVICE_ACCOUNT = google_service_account.dataproc.email
    DATAPROC_SUBNETWORK      = google_compute_subnetwork.dataproc.id
    BATCH_TIMEOUT_SECONDS    = tostring(var.batch_timeout_seconds)
    CLOUD_RUN_JOBS_INGEST    = join(",", var.cloud_run_jobs_ingest)
    CLOUD_RUN_JOBS_MIDDLE    = join(",", var.cloud_run_jobs_middle)
    CLOUD_RUN_JOBS_FINAL     = join(",", var.cloud_run_jobs_final)
    DB_HOST                  = var.db_host
    DB_PORT                  = tostring(var.db_port)
    DB_NAME                  = var.db_name
    DB_USER                  = var.db_user
    DB_PASSWORD_SECRET       = "${google_secret_manager_secret.db_password.id}/versions/latest"
    TRAIN_DAYS               = tostring(var.train_days)
    SEED                     = tostring(var.seed)
    MODEL_DIR                = "gs://${google_storage_bucket.poolcast_models.name}/models"
    FORECAST_EXECUTORS       = tostring(var.forecast_executors)
  }

  depends_on = [google_project_service.enabled]
}

# --- the schedule ----------------------------------------------------------------------------------

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "poolcast-scheduler"
  display_name = "Starts the poolcast pipeline workflow"
}

resource "google_project_iam_member" "scheduler_invokes_workflows" {
  project = var.project_id
  role    = "roles/workflows.invoker"
  member  = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_cloud_scheduler_job" "daily" {
  project     = var.project_id
  region      = var.region
  name        = "poolcast-daily"
  description = "Runs the poolcast pipeline once a day."
  schedule    = var.schedule
  time_zone   = var.time_zone

  retry_config {
    retry_count = 1
  }

  http_target {
    http_method = "POST"
    uri         = "https://workflowexecutions.googleapis.com/v1/${google_workflows_workflow.pipeline.id}/executions"
    body        = base64encode(jsonencode({ argument = jsonencode({}), callLogLevel = "LOG_ERRORS_ONLY" }))

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_project_service.enabled]
}

# --- Cloud Build uploads the Spark code: this bucket only ------------------------------------------

resource "google_storage_bucket_iam_member" "cloudbuild_code" {
  bucket = google_storage_bucket.spark_code.name
  role   = "roles/storage.objectAdmin"
  member = local.cloudbuild_member
}
