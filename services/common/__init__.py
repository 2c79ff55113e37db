"""Plain-Python building blocks shared by the services' domain code (no gRPC here)."""
