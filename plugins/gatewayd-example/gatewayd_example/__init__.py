"""gatewayd-example: the template a plugin author copies."""
