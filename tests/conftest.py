"""Shared fixtures: one real SeaweedFS server per test session, a fresh key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.devtools.s3server import EmbeddedS3
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
