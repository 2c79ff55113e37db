# Memorystore for Redis, the platform's cache: highly available, reachable only over
# private service access, AUTH required, TLS in transit (port 6378), CMEK at rest.

resource "google_redis_instance" "cache" {
  project                 = var.project_id
  name                    = var.name
  region                  = var.region
  tier                    = "STANDARD_HA"
  replica_count           = 1
  read_replicas_mode      = "READ_REPLICAS_ENABLED"
  memory_size_gb          = var.memory_size_gb
  redis_version           = var.redis_version
  authorized_network      = var.network_id
  connect_mode            = "PRIVATE_SERVICE_ACCESS"
  reserved_ip_range       = var.reserved_ip_range
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"
  customer_managed_key    = var.kms_key_id

  redis_configs = {
    maxmemory-policy = "allkeys-lru"
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours   = 3
        minutes = 0
        seconds = 0
        nanos   = 0
      }
    }
  }

  lifecycle {
    prevent_destroy = true
  }
}
