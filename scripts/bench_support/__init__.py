"""Helpers for scripts/bench: process control, wrk runs, the targets under test, the report."""
