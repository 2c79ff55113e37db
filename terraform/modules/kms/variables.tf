variable "project_id" {
  description = "Project that owns the key ring."
  type        = string
}

variable "location" {
  description = "Location of the key ring: the region of the resources it protects (CMEK keys must be co-located)."
  type        = string
}

variable "key_ring_name" {
  description = "Name of the key ring (key rings cannot be deleted: choose once)."
  type        = string
  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]{1,63}$", var.key_ring_name))
    error_message = "key_ring_name: letters, digits, '_' and '-', at most 63 characters."
  }
}

variable "keys" {
  description = "Keys to create, by name, each with the members (service agents) allowed to encrypt and decrypt with it."
  type = map(object({
    encrypters = list(string)
  }))
  validation {
    condition     = length(var.keys) > 0
    error_message = "At least one key is needed."
  }
}

variable "rotation_period" {
  description = "Automatic rotation period of every key, in seconds with an 's' suffix (90 days by default)."
  type        = string
  default     = "7776000s"
  validation {
    condition     = can(regex("^[0-9]+s$", var.rotation_period)) && tonumber(trimsuffix(var.rotation_period, "s")) <= 7776000
    error_message = "rotation_period: seconds with an 's' suffix, at most 90 days (7776000s)."
  }
}

variable "protection_level" {
  description = "SOFTWARE or HSM."
  type        = string
  default     = "SOFTWARE"
  validation {
    condition     = contains(["SOFTWARE", "HSM"], var.protection_level)
    error_message = "protection_level must be SOFTWARE or HSM."
  }
}
