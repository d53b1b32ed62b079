"""Database tables; never published, never parsed from the wire."""

from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel


class AuditLog(SQLModel, table=True):
    """A row of the platform's `audit_logs` table, as its audit UI reads it."""

    __tablename__ = "audit_logs"
    __table_args__ = (
        sa.Index("ix_audit_logs_tenant_created", "tenant_id", sa.text("created_at DESC")),
        sa.Index("ix_audit_logs_tenant_action", "tenant_id", "action"),
        sa.Index("ix_audit_logs_tenant_occurred", "tenant_id", sa.text("occurred_at DESC")),
        sa.Index("uq_audit_logs_idempotency_key", "idempotency_key", unique=True),
    )

    id: UUID = Field(
        sa_column=sa.Column(
            postgresql.UUID(as_uuid=True),
            primary_key=True,
            server_default=sa.text("gen_random_uuid()"),
        )
    )
    tenant_id: UUID = Field(sa_column=sa.Column(postgresql.UUID(as_uuid=True), nullable=False))
    user_id: UUID | None = Field(default=None, sa_column=sa.Column(postgresql.UUID(as_uuid=True)))
    action: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    # Nullable as in the platform's table, whose own rows need not name a resource; the
    # service's rows always do (device, the device id).
    resource_type: str | None = Field(default=None, sa_column=sa.Column(sa.String(50)))
    resource_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(255)))
    device_id: UUID | None = Field(default=None, sa_column=sa.Column(postgresql.UUID(as_uuid=True)))
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(postgresql.JSONB, nullable=False)
    )
    # The bare address as text (varchar(45), the longest IPv6 text form), as the platform's
    # table has it and its audit API hands it on.
    ip_address: str | None = Field(default=None, sa_column=sa.Column(sa.String(45)))
    # The audit UI sorts by created_at: it holds when the event happened (end_time),
    # not when a possibly late consumer got to it.
    created_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        )
    )
    # The platform's Transit ciphertext (vault:v1:…) of the details; `details` is then {}.
    encrypted_details: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    occurred_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    ingested_at: datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        )
    )
    # One row per event source: redeliveries and repeated end events of one
    # session meet this key and are skipped. NULL for rows written by others.
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(255)))
