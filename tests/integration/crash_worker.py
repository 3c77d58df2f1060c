"""A process that appends as fast as it can and reports every acknowledged append on stdout.

Run by test_storage_durability.py, which kills it with SIGKILL at a random moment.
Each ack line: `<stream id> <base offset> <record count> <seq>`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from engine.storage.objects.store import ObjectStoreConfig
from tests.integration.storage_helpers import make_engine, payload

STREAMS = 4


async def main(data_dir: Path, s3: ObjectStoreConfig, kind: str, overrides: dict[str, object]) -> None:
    engine = await make_engine(data_dir, s3, kind, **overrides)  # type: ignore[arg-type]
    streams = [await engine.open_stream(sid, 1) for sid in range(STREAMS)]
    out = sys.stdout
    print("ready", flush=True)
    seq = 0

    def report(sid: int, count: int, s: int, fut: asyncio.Future[int]) -> None:
        if not fut.exception():
            out.write(f"{sid} {fut.result()} {count} {s}\n")
            out.flush()

    while True:
        futs = []
        for _ in range(16):
            seq += 1
            sid = seq % STREAMS
            count = 1 + seq % 3
            fut = streams[sid].append(payload(sid, seq, 200 + (seq * 37) % 3000), count)
            fut.add_done_callback(lambda f, sid=sid, count=count, s=seq: report(sid, count, s, f))
            futs.append(fut)
        await asyncio.gather(*futs, return_exceptions=True)


if __name__ == "__main__":
    cfg = json.loads(sys.argv[2])
    asyncio.run(main(Path(sys.argv[1]), ObjectStoreConfig(**cfg), sys.argv[3], json.loads(sys.argv[4])))
