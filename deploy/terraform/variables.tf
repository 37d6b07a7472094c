variable "project_id" {
  description = "GCP project that runs the pipeline."
  type        = string
}

variable "region" {
  description = "Region of the buckets, the subnetwork, the batches, the workflow and the schedule."
  type        = string
  default     = "us-central1"
}

variable "network" {
  description = "Self link of an existing VPC to put the Dataproc subnetwork in (the one Cloud SQL's private IP is on); empty creates poolcast-vpc."
  type        = string
  default     = ""
}

variable "subnet_cidr" {
  description = "IP range of the Dataproc subnetwork."
  type        = string
  default     = "10.0.2.0/24"
}

variable "db_host" {
  description = "PostgreSQL host (Cloud SQL private IP) the batches connect to."
  type        = string
}

variable "db_port" {
  description = "PostgreSQL port."
  type        = number
  default     = 5432
}

variable "db_name" {
  description = "PostgreSQL database."
  type        = string
  default     = "defiyieldopt_db"
}

variable "db_user" {
  description = "PostgreSQL user."
  type        = string
  default     = "defiyieldopt_user"
}

variable "db_password_secret_id" {
  description = "Secret Manager secret (created here, without a version) that holds the DB password."
  type        = string
  default     = "poolcast-db-password"
}

variable "db_sslmode" {
  description = "DB_SSLMODE of the batches: require (encrypted) or, with the server CA on the workers, verify-ca/verify-full (see docs/deployment.md)."
  type        = string
  default     = "require"

  validation {
    condition     = contains(["require", "verify-ca", "verify-full"], var.db_sslmode)
    error_message = "db_sslmode must encrypt: require, verify-ca or verify-full."
  }
}

variable "train_days" {
  description = "TRAIN_DAYS of the forecast."
  type        = number
  default     = 60
}

variable "seed" {
  description = "Random seed of the forecast."
  type        = number
  default     = 42
}

variable "forecast_executors" {
  description = "Fixed spark.executor.instances of the forecast batch (dynamic allocation is off for SynapseML LightGBM); the same default as `poolcast submit`."
  type        = number
  default     = 2
}

variable "batch_timeout_seconds" {
  description = "How long the workflow waits for one batch; also the batch's ttl. Longer than the connector's 1800 s default."
  type        = number
  default     = 10800
}

variable "cloud_run_jobs_ingest" {
  description = "Cloud Run jobs of steps 1-6, in order (the pipeline's existing jobs)."
  type        = list(string)
  default     = []
}

variable "cloud_run_jobs_middle" {
  description = "Cloud Run jobs of steps 8-10, in order."
  type        = list(string)
  default     = []
}

variable "cloud_run_jobs_final" {
  description = "Cloud Run jobs of steps 12-17, in order."
  type        = list(string)
  default     = []
}

variable "schedule" {
  description = "Cron schedule of the daily run."
  type        = string
  default     = "0 3 * * *"
}

variable "time_zone" {
  description = "Time zone of the schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "github_owner" {
  description = "GitHub owner of the repository connected to Cloud Build (for the upload trigger)."
  type        = string
  default     = ""
}

variable "github_repo" {
  description = "GitHub repository connected to Cloud Build; empty creates no trigger (create it by hand with --service-account, see docs/deployment.md)."
  type        = string
  default     = ""
}

variable "github_branch" {
  description = "Branch whose pushes the trigger builds (a regular expression)."
  type        = string
  default     = "^main$"
}
