"""Tests of the built-in plugins, one module per plugin, driven by gatewayd.testing."""
