"""Append/read round trips through the log cache, the WAL and S3, for every WAL kind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.storage.errors import OffsetOutOfRange
from engine.storage.objects.store import ObjectStoreConfig
from tests.integration.storage_helpers import make_engine, payload, stop_engine

KINDS = ["file", "nfs", "s3"]


async def read_all(stream, start: int = 0) -> list[tuple[int, int, bytes]]:  # type: ignore[no-untyped-def]
    out = []
    offset = start
    while offset < stream.end_offset:
        batches = await stream.read(offset, 64 << 10)
        assert batches, f"no data at {offset} < {stream.end_offset}"
        for b in batches:
            out.append((b.base_offset, b.record_count, b.payload))
            offset = b.end_offset
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip_cache_wal_s3(kind: str, data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, kind)  # type: ignore[arg-type]
        streams = [await engine.open_stream(sid, 1) for sid in range(3)]
        expected: dict[int, list[tuple[int, int, bytes]]] = {s.stream_id: [] for s in streams}
        offsets: dict[int, int] = {s.stream_id: 0 for s in streams}
        futs = []
        for seq in range(60):
            for s in streams:
                count = 1 + seq % 3
                data = payload(s.stream_id, seq, 500 + seq * 10)
                expected[s.stream_id].append((offsets[s.stream_id], count, data))
                offsets[s.stream_id] += count
                futs.append(s.append(data, count))
        bases = await asyncio.gather(*futs)
        assert sorted(bases) == sorted(b for rows in expected.values() for b, _, _ in rows)
        # 1: tail reads come from the log cache.
        for s in streams:
            assert await read_all(s) == expected[s.stream_id]
        assert engine.store.stats.get == 0
        # 2: after upload and with the cache emptied, reads come from S3.
        await engine.flush()
        assert engine.metrics()["objects_uploaded"] >= 1
        engine.log_cache.max_bytes = 0
        engine.log_cache.evict()
        assert engine.log_cache.size == 0
        for s in streams:
            assert await read_all(s) == expected[s.stream_id]
            assert await read_all(s, 5) == [r for r in expected[s.stream_id] if r[0] + r[1] > 5]
        assert engine.store.stats.get > 0
        # 3: after a restart without upload, the WAL replays into S3.
        more = [s.append(payload(s.stream_id, 1000), 2) for s in streams]
        await asyncio.gather(*more)
        for s in streams:
            expected[s.stream_id].append((offsets[s.stream_id], 2, payload(s.stream_id, 1000)))
        await stop_engine(engine, flush=False)
        engine = await make_engine(data_dir, s3_config, kind)  # type: ignore[arg-type]
        for sid in range(3):
            s = await engine.open_stream(sid, 1)
            assert s.end_offset == offsets[sid] + 2
            assert await read_all(s) == expected[sid]
            with pytest.raises(OffsetOutOfRange):
                await s.read(s.end_offset + 1)
        await stop_engine(engine)

    asyncio.run(main())
