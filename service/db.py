"""The process's one database engine."""

from functools import lru_cache

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import get_settings
from service.repository import create_engine


@lru_cache(maxsize=1)
def get_engine() -> AsyncEngine:
    """The engine for DATABASE_URL, created on first use."""
    return create_engine(get_settings().database_url)
