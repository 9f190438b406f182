"""The traffic tests use the root fixtures (``redis_server`` among them)."""
