"""Security and tenancy: each control tested against a real server configured for it."""
