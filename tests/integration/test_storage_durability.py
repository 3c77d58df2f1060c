"""Durability: kill -9 mid-append, a full WAL, S3 going away, and an nfs WAL taken over."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.devtools.s3server import EmbeddedS3
from engine.storage.errors import FencedError
from engine.storage.objects.store import ObjectStoreConfig
from tests.integration.storage_helpers import make_engine, payload, payloads_from_s3, stop_engine

ROOT = Path(__file__).resolve().parents[2]


def run_worker(
    data_dir: Path, s3: ObjectStoreConfig, kind: str, acks_before_kill: int, **overrides: object
) -> list[tuple[int, int, int, int]]:
    """Start crash_worker, SIGKILL it after some acks, return the acks it reported."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.crash_worker",
            str(data_dir),
            json.dumps(dataclasses.asdict(s3)),
            kind,
            json.dumps(overrides),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: list[tuple[int, int, int, int]] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + (proc.stderr.read() if proc.stderr else "")
        target = acks_before_kill + random.randint(0, acks_before_kill // 2)
        for line in proc.stdout:
            acks.append(tuple(int(x) for x in line.split()))  # type: ignore[arg-type]
            if len(acks) >= target:
                break
        os.kill(proc.pid, signal.SIGKILL)
        # Acks printed before the kill landed are acks too.
        rest, _ = proc.communicate(timeout=30)
        for line in rest.splitlines():
            parts = line.split()
            if len(parts) == 4:
                acks.append(tuple(int(x) for x in parts))  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return acks


async def verify_recovered(
    data_dir: Path, s3: ObjectStoreConfig, kind: str, acks: list[tuple[int, int, int, int]], **overrides: object
) -> int:
    """Every ack is readable with its exact bytes; every batch read is whole and in order."""
    engine = await make_engine(data_dir, s3, kind, **overrides)  # type: ignore[arg-type]
    acked = {(sid, base): (count, seq) for sid, base, count, seq in acks}
    total = 0
    for sid in range(4):
        stream = await engine.open_stream(sid, 1)
        offset = 0
        while offset < stream.end_offset:
            for b in await stream.read(offset, 1 << 20):
                assert b.base_offset == offset, f"stream {sid}: gap or overlap at {offset}"
                seq = int(b.payload.split(b":")[1])
                assert b.payload == payload(sid, seq, len(b.payload)), "a batch came back altered"
                if (sid, b.base_offset) in acked:
                    assert acked.pop((sid, b.base_offset)) == (b.record_count, seq)
                offset = b.end_offset
                total += 1
    assert not acked, f"{len(acked)} acknowledged appends were lost, e.g. {next(iter(acked))}"
    await stop_engine(engine)
    return total


@pytest.mark.parametrize("kind", ["file", "nfs", "s3"])
def test_kill9_mid_append_loses_no_ack(kind: str, data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    # Small upload thresholds so the kill also lands during uploads and WAL trims.
    overrides = {"upload_bytes": 256 << 10, "wal_capacity": 4 << 20}
    acks = run_worker(data_dir, s3_config, kind, 400 if kind == "s3" else 3000, **overrides)
    assert len(acks) >= 400
    total = asyncio.run(verify_recovered(data_dir, s3_config, kind, acks, **overrides))
    assert total >= len(acks)
    # A second crash right after recovery must not resurrect or lose anything either.
    acks2 = run_worker(data_dir, s3_config, kind, 200, **overrides)
    asyncio.run(verify_recovered(data_dir, s3_config, kind, acks + acks2, **overrides))


def test_kill9_mid_append_loses_no_ack_with_postgres_metadata(
    data_dir: Path, s3_config: ObjectStoreConfig, pg_url: str
) -> None:
    """The same crash, with the storage metadata on PostgreSQL (commits and epochs over the network)."""
    overrides = {"upload_bytes": 256 << 10, "wal_capacity": 4 << 20, "metadata_path": pg_url}
    acks = run_worker(data_dir, s3_config, "nfs", 2000, **overrides)
    assert len(acks) >= 400
    asyncio.run(verify_recovered(data_dir, s3_config, "nfs", acks, **overrides))


def test_torn_tail_is_ignored(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, "file", upload_interval_s=3600, upload_bytes=1 << 30)
        s = await engine.open_stream(7, 1)
        for i in range(10):
            await s.append(payload(7, i, 1000), 1)
        pos = engine.wal.used_bytes()
        await stop_engine(engine, flush=False)
        # Scribble a torn frame right after the last good one, as a crash mid-write would.
        ring = data_dir / "wal" / "wal.ring"
        with open(ring, "r+b") as f:
            f.seek(pos)
            f.write(b"\xff" * 37)
        engine = await make_engine(data_dir, s3_config, "file")
        s = await engine.open_stream(7, 1)
        assert s.end_offset == 10
        assert [b.payload for b in await s.read(0, 1 << 20)] == [payload(7, i, 1000) for i in range(10)]
        await stop_engine(engine)

    asyncio.run(main())


def test_wal_full_appends_wait_nothing_lost(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    async def main() -> None:
        # The WAL holds ~1 MiB and uploads are slow to start: appends must wait for trims, not fail.
        engine = await make_engine(
            data_dir, s3_config, "file", wal_capacity=1 << 20, upload_bytes=512 << 10, upload_interval_s=0.5
        )
        s = await engine.open_stream(1, 1)
        futs = [s.append(payload(1, i, 16 << 10), 1) for i in range(400)]  # 6.4 MiB through a 1 MiB WAL
        bases = await asyncio.wait_for(asyncio.gather(*futs), 60)
        assert bases == list(range(400))
        assert engine.wal.stats.full_waits > 0
        assert await payloads_from_s3(engine, s, 400) == [payload(1, i, 16 << 10) for i in range(400)]
        await stop_engine(engine)

    asyncio.run(main())


def test_s3_outage_appends_continue_then_resume(tmp_path: Path) -> None:
    """S3 stops: appends continue into the WAL until it is full; when S3 returns, uploads resume."""

    async def main(server: EmbeddedS3) -> None:
        ep = server.endpoint
        s3 = ObjectStoreConfig(ep.url, ep.bucket, ep.access_key, ep.secret_key, max_attempts=1, connect_timeout_s=0.5)
        engine = await make_engine(tmp_path, s3, "file", wal_capacity=2 << 20, upload_bytes=256 << 10)
        s = await engine.open_stream(1, 1)
        for i in range(20):
            await s.append(payload(1, i, 8 << 10), 1)
        await engine.flush()
        server.kill()
        # ~1.9 MiB more fits the WAL; the rest must wait for S3.
        futs = [s.append(payload(1, i, 8 << 10), 1) for i in range(20, 400)]
        await asyncio.sleep(3)
        done = sum(f.done() for f in futs)
        assert 100 < done < 380, f"{done} appends completed while S3 was down"
        assert all(not f.done() or f.exception() is None for f in futs)
        assert engine.metrics()["upload_failures"] > 0
        server.start()
        await asyncio.wait_for(asyncio.gather(*futs), 60)
        assert await payloads_from_s3(engine, s, 400) == [payload(1, i, 8 << 10) for i in range(400)]
        await stop_engine(engine)

    server = EmbeddedS3(tmp_path / "s3")
    server.start()
    try:
        asyncio.run(main(server))
    finally:
        server.stop()


def test_nfs_takeover_fences_live_owner(data_dir: Path, s3_config: ObjectStoreConfig, metadata_spec: str) -> None:
    async def main() -> None:
        shared = data_dir / "shared"
        md = metadata_spec
        a = await make_engine(
            data_dir,
            s3_config,
            "nfs",
            metadata_path=md,
            wal_path=str(shared),
            wal_wal_id="broker-a",
            owner="a",
            upload_interval_s=3600,
            upload_bytes=1 << 30,
        )
        b = await make_engine(
            data_dir, s3_config, "nfs", metadata_path=md, wal_path=str(shared), wal_wal_id="broker-b", owner="b"
        )
        sa = await a.open_stream(1, 1)
        sb = await b.open_stream(2, 1)
        for i in range(50):
            await sa.append(payload(1, i), 1)
            await sb.append(payload(2, i), 1)
        # b takes over a's WAL while a is alive: a's data moves to S3 under b, a is fenced.
        recovered, epochs = await b.take_over_wal(dataclasses.replace(a.config.wal))
        assert recovered == 50 and epochs == {1: 2}
        with pytest.raises(FencedError):
            await sa.append(payload(1, 999), 1)
        with pytest.raises(FencedError):
            await sa.append(payload(1, 1000), 1)
        sa_new = await b.open_stream(1, 2)
        assert sa_new.end_offset == 50
        assert [x.payload for x in await sa_new.read(0, 1 << 20)] == [payload(1, i) for i in range(50)]
        assert [x.payload for x in await sb.read(0, 1 << 20)] == [payload(2, i) for i in range(50)]
        await sa_new.append(payload(1, 50), 1)
        await stop_engine(a, flush=False)
        await stop_engine(b)
        # After everything restarts, both streams hold exactly what was acknowledged.
        c = await make_engine(
            data_dir, s3_config, "nfs", metadata_path=md, wal_path=str(shared), wal_wal_id="broker-b", owner="b"
        )
        s1 = await c.open_stream(1, 2)
        s2 = await c.open_stream(2, 1)
        assert [x.payload for x in await s1.read(0, 1 << 20)] == [payload(1, i) for i in range(51)]
        assert [x.payload for x in await s2.read(0, 1 << 20)] == [payload(2, i) for i in range(50)]
        await stop_engine(c)

    asyncio.run(main())


def test_file_takeover_fences_listed_streams_before_reading(
    data_dir: Path, s3_config: ObjectStoreConfig, metadata_spec: str
) -> None:
    """A `file` WAL has no owner check: the streams the controller lists are fenced first, so the
    old owner (if it still runs) acknowledges nothing the survivor did not read."""

    async def main() -> None:
        a = await make_engine(
            data_dir, s3_config, "file", owner="a", metadata_path=metadata_spec, upload_interval_s=3600,
            upload_bytes=1 << 30,
        )  # fmt: skip
        b_dir = data_dir / "b"
        b_dir.mkdir()
        b = await make_engine(b_dir, s3_config, "file", owner="b", metadata_path=metadata_spec)
        s1 = await a.open_stream(1, 3)
        await a.open_stream(2, 3)  # led by a, never written
        for i in range(20):
            await s1.append(payload(1, i), 1)
        recovered, epochs = await b.take_over_wal(dataclasses.replace(a.config.wal), streams={1: 3, 2: 3, 9: 0})
        assert recovered == 20 and epochs == {1: 4, 2: 4}
        with pytest.raises(FencedError):
            await s1.append(payload(1, 99), 1)
        again = await b.open_stream(1, 4)
        assert [x.payload for x in await again.read(0, 1 << 20)] == [payload(1, i) for i in range(20)]
        await stop_engine(a, flush=False)
        await stop_engine(b)

    asyncio.run(main())


def test_reopen_at_higher_epoch_fences_old_handle(
    data_dir: Path, s3_config: ObjectStoreConfig, metadata_spec: str
) -> None:
    async def main() -> None:
        a = await make_engine(data_dir, s3_config, "file", metadata_path=metadata_spec)
        old = await a.open_stream(3, 1)
        await old.append(b"x", 1)
        # Another process opens the stream at epoch 2 through the shared metadata store.
        from engine.storage.metadata import open_metadata_store

        other = open_metadata_store(metadata_spec)
        await other.open_stream(3, 2)
        with pytest.raises(FencedError):
            await old.append(b"y", 1)
        with pytest.raises(FencedError):
            await old.append(b"z", 1)
        await other.close()
        await stop_engine(a)

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 30
