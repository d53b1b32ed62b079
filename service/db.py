"""The process's one database engine."""

from functools import lru_cache

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import get_settings
from service.repository import create_engine


@lru_cache(maxsize=1)
def get_engine() -> AsyncEngine:
    """The engine for DATABASE_URL, created on first use."""
    settings = get_settings()
    return create_engine(
        settings.database_url,
        sslmode=settings.database_sslmode,
        root_cert=settings.database_ssl_root_cert,
    )
