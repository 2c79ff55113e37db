# The VPC of the platform: one subnet with the GKE secondary ranges, Cloud NAT for
# egress of the private nodes, private service access (Memorystore, Vector Search),
# and DNS that sends *.googleapis.com to private.googleapis.com so that workloads
# reach Google APIs on a fixed, small range (the chart's NetworkPolicies allow it).

locals {
  # private.googleapis.com: https://cloud.google.com/vpc/docs/configure-private-google-access
  private_googleapis_cidr = "199.36.153.8/30"
  private_googleapis_ips  = ["199.36.153.8", "199.36.153.9", "199.36.153.10", "199.36.153.11"]
}

resource "google_compute_network" "vpc" {
  project                         = var.project_id
  name                            = "${var.name}-vpc"
  auto_create_subnetworks         = false
  routing_mode                    = "REGIONAL"
  delete_default_routes_on_create = false
}

resource "google_compute_subnetwork" "gke" {
  project                    = var.project_id
  name                       = "${var.name}-gke"
  region                     = var.region
  network                    = google_compute_network.vpc.id
  ip_cidr_range              = var.nodes_cidr
  private_ip_google_access   = true
  private_ipv6_google_access = "ENABLE_OUTBOUND_VM_ACCESS_TO_GOOGLE"

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pods_cidr
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.services_cidr
  }

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Firewall: explicit lowest-priority deny of all ingress (logged), and the one
# external source the platform needs: Google's load balancers and health checks
# reaching the gateway's Pods (container-native load balancing). GKE adds its own
# rules for control plane to node traffic.
resource "google_compute_firewall" "deny_all_ingress" {
  project       = var.project_id
  name          = "${var.name}-deny-all-ingress"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  priority      = 65534
  source_ranges = ["0.0.0.0/0"]

  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "allow_load_balancers" {
  project       = var.project_id
  name          = "${var.name}-allow-load-balancers"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  priority      = 1000
  source_ranges = ["130.211.0.0/22", "35.191.0.0/16"]
  target_tags   = [var.node_tag]

  allow {
    protocol = "tcp"
    ports    = var.load_balancer_ports
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Route to the private Google APIs range through the default internet gateway
# (traffic stays on Google's network; the route exists by default, this pins it).
resource "google_compute_route" "private_googleapis" {
  project          = var.project_id
  name             = "${var.name}-private-googleapis"
  network          = google_compute_network.vpc.id
  dest_range       = local.private_googleapis_cidr
  next_hop_gateway = "default-internet-gateway"
  priority         = 100
}

resource "google_compute_router" "router" {
  project = var.project_id
  name    = "${var.name}-router"
  region  = var.region
  network = google_compute_network.vpc.id
}

resource "google_compute_router_nat" "nat" {
  project                            = var.project_id
  name                               = "${var.name}-nat"
  router                             = google_compute_router.router.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.gke.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Private service access: Memorystore and the Vector Search endpoint get addresses
# from this range, reached over VPC peering.
resource "google_compute_global_address" "private_service_access" {
  project       = var.project_id
  name          = "${var.name}-psa"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  address       = split("/", var.private_service_access_cidr)[0]
  prefix_length = tonumber(split("/", var.private_service_access_cidr)[1])
  network       = google_compute_network.vpc.id
}

resource "google_service_networking_connection" "private_service_access" {
  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_service_access.name]
}

# *.googleapis.com -> private.googleapis.com (199.36.153.8/30) inside the VPC.
resource "google_dns_managed_zone" "googleapis" {
  project     = var.project_id
  name        = "${var.name}-googleapis"
  dns_name    = "googleapis.com."
  description = "Private Google Access: Google APIs on private.googleapis.com."
  visibility  = "private"

  private_visibility_config {
    networks {
      network_url = google_compute_network.vpc.id
    }
  }
}

resource "google_dns_record_set" "private_googleapis" {
  project      = var.project_id
  managed_zone = google_dns_managed_zone.googleapis.name
  name         = "private.googleapis.com."
  type         = "A"
  ttl          = 300
  rrdatas      = local.private_googleapis_ips
}

resource "google_dns_record_set" "googleapis_wildcard" {
  project      = var.project_id
  managed_zone = google_dns_managed_zone.googleapis.name
  name         = "*.googleapis.com."
  type         = "CNAME"
  ttl          = 300
  rrdatas      = ["private.googleapis.com."]
}

# Stable private names for managed services (e.g. redis.rag.internal).
resource "google_dns_managed_zone" "internal" {
  project     = var.project_id
  name        = "${var.name}-internal"
  dns_name    = var.internal_dns_name
  description = "Private names of the platform's managed services."
  visibility  = "private"

  private_visibility_config {
    networks {
      network_url = google_compute_network.vpc.id
    }
  }
}
