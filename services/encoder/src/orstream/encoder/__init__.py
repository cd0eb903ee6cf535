"""Encoder: raw frames from the shared-memory ring to H.264 access units on NATS."""
