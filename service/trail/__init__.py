"""The tamper-evident trail of the audit rows (docs/trail.md).

canonical and hashing: the bytes a row and a seal hash to; keys: signing and trusted keys;
seals and store: the append under the lock, the one function the writer calls; anchor: the
seals published to JetStream; verify, report, view, connect and cli: `trail verify` and the
other `trail` commands. Nothing is imported here: the writer's import of seals.py must not
pull in NATS or the command line.
"""
