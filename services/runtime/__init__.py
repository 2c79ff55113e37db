"""Shared runtime used by every service: settings, gRPC server bootstrap with
health, reflection and drain, typed clients with deadlines, error mapping, and
observability (JSON logs, Prometheus metrics, OpenTelemetry tracing).

A service's own folder holds only its domain logic and a servicer; everything a
process needs to run inside the platform lives here, once.
"""
