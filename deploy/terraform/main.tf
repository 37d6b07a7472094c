# poolcast on Dataproc Serverless (plan Phase 1, with ERRATA.md's fixes): three buckets, a batch
# service account with least privilege (bucket- and secret-level grants, no project-wide storage
# role), a subnetwork with Private Google Access, the workflow and its schedule.

locals {
  # Every API a resource below needs (IAM for the service accounts, Cloud Build for the trigger,
  # Monitoring for the batches' metrics). Resources depend on these, so a first apply on an empty
  # project enables them before it uses them.
  services = [
    "cloudbuild.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "dataproc.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "workflowexecutions.googleapis.com",
    "workflows.googleapis.com",
  ]
  network_self_link = var.network != "" ? var.network : google_compute_network.vpc[0].self_link
  cloud_run_jobs    = toset(concat(var.cloud_run_jobs_ingest, var.cloud_run_jobs_middle, var.cloud_run_jobs_final))
  # Network tag of every batch VM (poolcast.deploy.batch_spec.NETWORK_TAG).
  dataproc_tag = "poolcast-dataproc"
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

  depends_on = [google_project_service.enabled]
}

# Dataproc Serverless requires this role on the project for the workload's service account.
resource "google_project_iam_member" "dataproc_worker" {
  project = var.project_id
  role    = "roles/dataproc.worker"
  member  = "serviceAccount:${google_service_account.dataproc.email}"
}

# Each stage writes its duration, records and status to Cloud Monitoring (poolcast.runs).
resource "google_project_iam_member" "dataproc_metric_writer" {
  project = var.project_id
  role    = "roles/monitoring.metricWriter"
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

  depends_on = [google_project_service.enabled]
}

# Dataproc Serverless needs its driver and executors to reach each other on all ports within the
# subnet (Google's documented rule: source and destination both the subnet's range). Only there:
# the destination range keeps it off every other VM of the network, and the target tag (carried by
# every batch, executionConfig.networkTags) off any other VM put in this subnet.
resource "google_compute_firewall" "dataproc_internal" {
  project   = var.project_id
  name      = "poolcast-dataproc-internal"
  network   = local.network_self_link
  direction = "INGRESS"

  allow {
    protocol = "all"
  }

  source_ranges      = [var.subnet_cidr]
  destination_ranges = [var.subnet_cidr]
  target_tags        = [local.dataproc_tag]

  depends_on = [google_project_service.enabled]
}

# --- the workflow and who may do what in it ---------------------------------------------------------

resource "google_service_account" "workflow" {
  project      = var.project_id
  account_id   = "poolcast-workflow"
  display_name = "poolcast pipeline workflow"

  depends_on = [google_project_service.enabled]
}

# Exactly what run_dataproc_batch calls: create and get a batch, cancel its operation at the
# deadline (Dataproc has no per-batch IAM; roles/dataproc.editor would also allow clusters, jobs,
# workflow templates and deleting any batch).
resource "google_project_iam_custom_role" "batch_runner" {
  project     = var.project_id
  role_id     = "poolcastBatchRunner"
  title       = "poolcast batch runner"
  description = "Create, follow and cancel Dataproc Serverless batches (the poolcast workflow)."
  permissions = [
    "dataproc.batches.create",
    "dataproc.batches.get",
    "dataproc.operations.cancel",
  ]

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "workflow_dataproc" {
  project = var.project_id
  role    = google_project_iam_custom_role.batch_runner.id
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

  depends_on = [google_project_service.enabled]
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

  # A revision from an earlier commit must be deployable over this one, and `terraform apply`
  # of the commit before the migration must be able to remove it (provider 6.x protects it).
  deletion_protection = false

  # 8 of the 20 variables Workflows allows: what the batches' drivers get travels as one JSON
  # map (keys: poolcast.deploy.batch_spec.DRIVER_ENV_KEYS), the Cloud Run jobs as another.
  user_env_vars = {
    CODE_BUCKET              = google_storage_bucket.spark_code.name
    STAGING_BUCKET           = google_storage_bucket.spark_staging.name
    DATAPROC_SERVICE_ACCOUNT = google_service_account.dataproc.email
    DATAPROC_SUBNETWORK      = google_compute_subnetwork.dataproc.id
    BATCH_TIMEOUT_SECONDS    = tostring(var.batch_timeout_seconds)
    FORECAST_EXECUTORS       = tostring(var.forecast_executors)
    CLOUD_RUN_JOBS = jsonencode({
      ingest = var.cloud_run_jobs_ingest
      middle = var.cloud_run_jobs_middle
      final  = var.cloud_run_jobs_final
    })
    DRIVER_ENV = jsonencode({
      DB_HOST            = var.db_host
      DB_PORT            = tostring(var.db_port)
      DB_NAME            = var.db_name
      DB_USER            = var.db_user
      DB_SSLMODE         = var.db_sslmode
      TRAIN_DAYS         = tostring(var.train_days)
      POOLCAST_SEED      = tostring(var.seed)
      DB_PASSWORD_SECRET = "${google_secret_manager_secret.db_password.id}/versions/latest"
      POOLCAST_MODEL_DIR = "gs://${google_storage_bucket.poolcast_models.name}/models"
    })
  }

  depends_on = [google_project_service.enabled]
}

# --- the schedule ----------------------------------------------------------------------------------

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "poolcast-scheduler"
  display_name = "Starts the poolcast pipeline workflow"

  depends_on = [google_project_service.enabled]
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

# --- Cloud Build uploads the Spark code: its own account, this bucket only ----------------------
# The default Cloud Build identity depends on an organization setting (the legacy Cloud Build
# account or the Compute Engine default account): a grant to one of them may miss the account
# builds really use. Builds run as this account instead: set it on the trigger (below, or
# `gcloud builds triggers create ... --service-account`, see docs/deployment.md).

resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "poolcast-build"
  display_name = "Cloud Build: tests and uploads poolcast's Spark code"

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket_iam_member" "build_code" {
  bucket = google_storage_bucket.spark_code.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.build.email}"
}

# A build with its own account writes its logs itself (cloudbuild.yaml: CLOUD_LOGGING_ONLY).
resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

# The trigger, when the repository is connected to Cloud Build (github_owner/github_repo set).
resource "google_cloudbuild_trigger" "upload" {
  count = var.github_repo != "" ? 1 : 0

  project         = var.project_id
  name            = "poolcast-upload"
  description     = "Tests, then uploads the Spark code of every commit on the main branch."
  filename        = "cloudbuild.yaml"
  service_account = google_service_account.build.id

  github {
    owner = var.github_owner
    name  = var.github_repo
    push {
      branch = var.github_branch
    }
  }

  depends_on = [google_project_service.enabled]
}
