"""Property: over random appends, reads, trims, uploads, cache drops and restarts, reads return
exactly what was acknowledged, in order. Runs on the real S3 server."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.storage.errors import OffsetOutOfRange
from engine.storage.objects.store import ObjectStoreConfig
from tests.integration.storage_helpers import make_engine, stop_engine

STREAMS = 3

op = st.one_of(
    st.tuples(st.just("append"), st.integers(0, STREAMS - 1), st.integers(1, 5), st.integers(1, 3000)),
    st.tuples(st.just("read"), st.integers(0, STREAMS - 1), st.floats(0, 1), st.integers(1, 20000)),
    st.tuples(st.just("trim"), st.integers(0, STREAMS - 1), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("upload"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("drop_cache"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("restart"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=60), kind=st.sampled_from(["file", "nfs", "s3"]))
def test_reads_return_exactly_what_was_acknowledged(
    ops: list[tuple[str, int, float, int]], kind: str, s3_config: ObjectStoreConfig
) -> None:
    s3 = dataclasses.replace(s3_config, prefix=f"p-{uuid.uuid4().hex[:10]}/")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(ops, kind, Path(tmp), s3))


async def run(ops: list[tuple[str, int, float, int]], kind: str, data_dir: Path, s3: ObjectStoreConfig) -> None:
    overrides = {"upload_bytes": 16 << 10, "upload_interval_s": 0.05, "block_size": 4 << 10}
    engine = await make_engine(data_dir, s3, kind, **overrides)  # type: ignore[arg-type]
    streams = [await engine.open_stream(i, 1) for i in range(STREAMS)]
    model: list[list[tuple[int, int, bytes]]] = [[] for _ in range(STREAMS)]
    starts = [0] * STREAMS
    counter = 0
    try:
        for name, sid, x, n in ops:
            if name == "append":
                counter += 1
                data = f"{sid}/{counter}/".encode() * (n // 8 + 1)
                end = model[sid][-1][0] + model[sid][-1][1] if model[sid] else 0
                assert await streams[sid].append(data, int(x)) == end
                model[sid].append((end, int(x), data))
            elif name == "read":
                end = model[sid][-1][0] + model[sid][-1][1] if model[sid] else 0
                offset = starts[sid] + int(x * (end - starts[sid]))
                got = [(b.base_offset, b.record_count, b.payload) for b in await streams[sid].read(offset, n)]
                want = [r for r in model[sid] if r[0] + r[1] > offset]
                assert got == want[: len(got)]
                assert (len(got) >= 1) == (offset < end)
                if offset > starts[sid]:
                    try:
                        await streams[sid].read(starts[sid] - 1, n)
                        raise AssertionError("read below the start offset succeeded")
                    except OffsetOutOfRange:
                        pass
            elif name == "trim":
                end = model[sid][-1][0] + model[sid][-1][1] if model[sid] else 0
                new_start = starts[sid] + int(x * (end - starts[sid]))
                await streams[sid].trim(new_start)
                starts[sid] = max(starts[sid], new_start)
            elif name == "upload":
                await engine.flush()
            elif name == "drop_cache":
                engine.log_cache.max_bytes = 0
                engine.log_cache.evict()
                engine.block_cache.max_bytes = 0
                engine.block_cache.put(("-", 0), [], 0)
            elif name == "restart":
                await stop_engine(engine, flush=False)
                engine = await make_engine(data_dir, s3, kind, **overrides)  # type: ignore[arg-type]
                streams = [await engine.open_stream(i, 1) for i in range(STREAMS)]
        # Finally everything acknowledged is there, from the start offsets on.
        for sid in range(STREAMS):
            offset, got = starts[sid], []
            while offset < streams[sid].end_offset:
                batches = await streams[sid].read(offset, 1 << 20)
                got += [(b.base_offset, b.record_count, b.payload) for b in batches]
                offset = batches[-1].end_offset
            assert got == [r for r in model[sid] if r[0] + r[1] > starts[sid]]
    finally:
        await stop_engine(engine, flush=False)
