"""Metrics, logging and the access log."""
