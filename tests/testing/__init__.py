"""Tests of the plugin test harness (gatewayd.testing)."""
