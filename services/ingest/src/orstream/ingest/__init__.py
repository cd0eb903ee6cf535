"""Ingest: OR sources into the shared-memory frame ring, announced and notified on NATS."""
