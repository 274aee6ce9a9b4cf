"""Transports: how payment channel messages travel (TCP, TLS)."""
