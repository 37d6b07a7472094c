terraform {
  required_version = ">= 1.5"

  # State in a versioned bucket, never on one machine: create it once, then
  # `terraform init -backend-config="bucket=<project>-tfstate"` (docs/deployment.md, section 2).
  backend "gcs" {
    prefix = "poolcast"
  }

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 7" # 6.x: google_workflows_workflow.deletion_protection
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
