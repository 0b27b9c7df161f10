"""transports layer (see docs/architecture.md)."""
