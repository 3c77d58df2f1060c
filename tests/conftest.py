"""Shared fixtures: one real SeaweedFS server and one real PostgreSQL server per test session,
a fresh key prefix and database per test."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.devtools.pgserver import PostgresServer
from engine.devtools.s3server import EmbeddedS3
from engine.storage.metadata import open_metadata_store
from engine.storage.metadata.interface import MetadataStore
from engine.storage.objects.store import ObjectStoreConfig


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    server = EmbeddedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_config(s3_server: EmbeddedS3) -> ObjectStoreConfig:
    ep = s3_server.endpoint
    return ObjectStoreConfig(
        endpoint=ep.url,
        bucket=ep.bucket,
        access_key=ep.access_key,
        secret_key=ep.secret_key,
        prefix=f"t-{uuid.uuid4().hex[:12]}/",
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server per test session (127.0.0.1, a free port, stopped by pid).

    Its directory is under /tmp rather than pytest's (mode 0700, root's) because, when the
    tests run as root, the server runs as another user that must reach its data.
    """
    directory = Path(tempfile.mkdtemp(prefix="amq-pg-"))
    server = PostgresServer(directory, durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database with amq's schema, dropped after the test."""
    from engine.postgres import migrate

    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.ensure_database(name)
    migrate(url, init=True)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def metadata_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where storage metadata lives, once per backend: an SQLite file's path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "metadata.db")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def two(metadata_spec: str) -> Iterator[tuple[MetadataStore, MetadataStore]]:
    """Two owners' stores (two brokers' processes) on the same metadata: `a` ours, `b` another's."""
    a, b = open_metadata_store(metadata_spec), open_metadata_store(metadata_spec)
    yield a, b
    asyncio.run(a.close())
    asyncio.run(b.close())
