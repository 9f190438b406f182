"""Admin API, dashboard and the operator endpoints on the admin listener."""
