"""Storage metadata: the MetadataStore interface (interface.py) on SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.storage.metadata.interface import MetadataStore


def open_metadata_store(where: str | Path, read_only: bool = False) -> MetadataStore:
    """A postgresql:// URL opens the PostgreSQL store, anything else is an SQLite file's path."""
    from engine.postgres import is_postgres_url

    if isinstance(where, str) and is_postgres_url(where):
        from engine.storage.metadata.postgres import PostgresMetadataStore

        return PostgresMetadataStore(where, read_only=read_only)
    from engine.storage.metadata.sqlite import SqliteMetadataStore

    return SqliteMetadataStore(where, read_only=read_only)
