"""Signaling and WebRTC edge: WHEP, identity, access decisions, encode-once fan-out."""
