# A private, regional GKE Standard cluster: private nodes, a private control-plane IP
# endpoint (plus the IAM-guarded DNS endpoint for operators), Workload Identity,
# Dataplane V2 (NetworkPolicy enforcement), Secrets encrypted with CMEK, shielded
# COS nodes with CMEK boot disks, managed Prometheus, and two node pools: general
# purpose, and GPUs for vLLM.

locals {
  node_tags = ["${var.name}-node"]
}

resource "google_container_cluster" "cluster" {
  # checkov:skip=CKV_GCP_12:Dataplane V2 (datapath_provider = ADVANCED_DATAPATH) enforces NetworkPolicy itself; the network_policy (Calico) setting must stay unset with it.
  # checkov:skip=CKV_GCP_24:PodSecurityPolicy was removed in Kubernetes 1.25; Pod Security Admission (namespace label enforce=restricted, k8s/base) replaces it.
  provider            = google
  project             = var.project_id
  name                = var.name
  location            = var.region
  node_locations      = var.zones
  deletion_protection = true

  network         = var.network_id
  subnetwork      = var.subnetwork_id
  networking_mode = "VPC_NATIVE"
  ip_allocation_policy {
    cluster_secondary_range_name  = var.pods_range_name
    services_secondary_range_name = var.services_range_name
  }

  # Node pools are managed below; the default pool is removed right away.
  remove_default_node_pool = true
  initial_node_count       = 1
  node_config {
    service_account   = var.node_service_account
    oauth_scopes      = ["https://www.googleapis.com/auth/cloud-platform"]
    image_type        = "COS_CONTAINERD"
    machine_type      = "e2-small"
    disk_size_gb      = 20
    boot_disk_kms_key = var.disk_kms_key_id
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  min_master_version = var.kubernetes_version
  release_channel {
    channel = var.release_channel
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = true
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block
    master_global_access_config {
      enabled = false
    }
  }

  control_plane_endpoints_config {
    dns_endpoint_config {
      allow_external_traffic = true
    }
  }

  master_authorized_networks_config {
    gcp_public_cidrs_access_enabled = false
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  authenticator_groups_config {
    security_group = var.rbac_security_group
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  database_encryption {
    state    = "ENCRYPTED"
    key_name = var.secrets_kms_key_id
  }

  datapath_provider           = "ADVANCED_DATAPATH"
  enable_intranode_visibility = true
  enable_shielded_nodes       = true
  enable_legacy_abac          = false

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  security_posture_config {
    mode               = "BASIC"
    vulnerability_mode = "VULNERABILITY_BASIC"
  }

  gateway_api_config {
    channel = "CHANNEL_STANDARD"
  }

  addons_config {
    http_load_balancing {
      disabled = false
    }
    horizontal_pod_autoscaling {
      disabled = false
    }
    gce_persistent_disk_csi_driver_config {
      enabled = true
    }
    gcs_fuse_csi_driver_config {
      enabled = true
    }
  }

  vertical_pod_autoscaling {
    enabled = true
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = true
    }
  }

  maintenance_policy {
    recurring_window {
      start_time = "2026-01-04T02:00:00Z"
      end_time   = "2026-01-04T08:00:00Z"
      recurrence = "FREQ=WEEKLY;BYDAY=SA,SU"
    }
  }

  resource_labels = var.labels
}

resource "google_container_node_pool" "general" {
  project        = var.project_id
  name           = "general"
  cluster        = google_container_cluster.cluster.id
  location       = var.region
  node_locations = var.zones

  autoscaling {
    total_min_node_count = var.general_pool.min_node_count * length(var.zones)
    total_max_node_count = var.general_pool.max_node_count * length(var.zones)
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type      = var.general_pool.machine_type
    disk_size_gb      = var.general_pool.disk_size_gb
    disk_type         = "pd-balanced"
    image_type        = "COS_CONTAINERD"
    boot_disk_kms_key = var.disk_kms_key_id
    service_account   = var.node_service_account
    oauth_scopes      = ["https://www.googleapis.com/auth/cloud-platform"]
    tags              = local.node_tags
    labels            = merge(var.labels, { pool = "general" })

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  project        = var.project_id
  name           = var.gpu_pool.name
  cluster        = google_container_cluster.cluster.id
  location       = var.region
  node_locations = var.gpu_zones

  autoscaling {
    total_min_node_count = var.gpu_pool.min_node_count
    total_max_node_count = var.gpu_pool.max_node_count
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type      = var.gpu_pool.machine_type
    disk_size_gb      = var.gpu_pool.disk_size_gb
    disk_type         = "pd-ssd"
    image_type        = "COS_CONTAINERD"
    boot_disk_kms_key = var.disk_kms_key_id
    service_account   = var.node_service_account
    oauth_scopes      = ["https://www.googleapis.com/auth/cloud-platform"]
    spot              = var.gpu_pool.spot
    tags              = local.node_tags
    labels            = merge(var.labels, { pool = var.gpu_pool.name })

    guest_accelerator {
      type  = var.gpu_pool.accelerator_type
      count = var.gpu_pool.accelerator_count
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    # GKE adds this taint to GPU nodes itself; stating it keeps plans stable and
    # documents what the chart's vllm.tolerations match.
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}
