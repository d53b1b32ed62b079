"""`make bench`: throughput, latency and memory of session-audit on real nats-server and PostgreSQL.

One run measures, each phase on fresh state: the JetStream ceiling (bare pull-and-ack),
the seed-style per-event baseline, the service draining a pre-filled stream (one and two
replicas), and publish-to-commit latency at a steady offered load. See `python -m bench -h`.
"""
