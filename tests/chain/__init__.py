"""Tests of the chain runner and builder (gatewayd.chain)."""
