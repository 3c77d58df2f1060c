"""Building blocks for storage tests: an engine on the real S3 server, and payloads that check themselves."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from engine.storage.config import StorageConfig, WalConfig, WalKind
from engine.storage.engine import StorageEngine
from engine.storage.metadata import open_metadata_store
from engine.storage.objects.store import ObjectStoreConfig, make_object_store
from engine.storage.stream import Stream


def storage_config(data_dir: Path, kind: WalKind, **overrides: object) -> StorageConfig:
    wal_path = data_dir / ("shared-wal" if kind == "nfs" else "wal")
    wal = WalConfig(kind=kind, path=str(wal_path), wal_id="broker-0", capacity=8 << 20, s3_batch_interval_s=0.02)
    wal_over = {k[4:]: v for k, v in overrides.items() if k.startswith("wal_")}
    rest = {k: v for k, v in overrides.items() if not k.startswith("wal_")}
    cfg = StorageConfig(wal=replace(wal, **wal_over), upload_interval_s=0.2, upload_bytes=1 << 20)  # type: ignore[arg-type]
    return replace(cfg, **rest)  # type: ignore[arg-type]


async def make_engine(
    data_dir: Path,
    s3: ObjectStoreConfig,
    kind: WalKind,
    start: bool = True,
    metadata_path: Path | str | None = None,
    **overrides: object,
) -> StorageEngine:
    """metadata_path: an SQLite file (default: data_dir/metadata.db) or a postgresql:// URL."""
    cfg = storage_config(data_dir, kind, **overrides)
    metadata = open_metadata_store(metadata_path or data_dir / "metadata.db")
    engine = StorageEngine(cfg, make_object_store(s3), metadata)
    if start:
        await engine.start()
    return engine


async def stop_engine(engine: StorageEngine, flush: bool = True) -> None:
    await engine.close(flush=flush)
    await engine.metadata.close()
    await engine.store.close()


def payload(stream_id: int, seq: int, size: int = 100) -> bytes:
    """Deterministic bytes naming their stream and sequence, so a read can be checked exactly."""
    head = f"{stream_id}:{seq}:".encode()
    body = hashlib.sha256(head).digest() * (size // 32 + 1)
    return (head + body)[:size]


async def payloads_from_s3(engine: StorageEngine, stream: Stream, end: int) -> list[bytes]:
    """Upload everything, empty the log cache, and read offsets [0, end) back: they must come from S3."""
    await engine.flush()
    engine.log_cache.max_bytes = 0
    engine.log_cache.evict()
    got: list[bytes] = []
    offset = 0
    while offset < end:
        for b in await stream.read(offset, 1 << 20):
            got.append(bytes(b.payload))
            offset = b.end_offset
    return got
