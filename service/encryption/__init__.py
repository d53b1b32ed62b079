"""Audit details encrypted with the tenant's OpenBao Transit data key, as the platform does."""

from service.encryption.errors import EncryptionUnavailable, FailureKind, data_key_name
from service.encryption.transit import TransitClient

__all__ = ["EncryptionUnavailable", "FailureKind", "TransitClient", "data_key_name"]
