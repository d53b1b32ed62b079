"""Fault-injection scenarios: each starts its own nats-server, PostgreSQL and service processes."""
