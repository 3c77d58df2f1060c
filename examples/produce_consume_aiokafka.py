"""Idempotent producer + consumer group with aiokafka (asyncio) against a local amq cluster.

python examples/produce_consume_aiokafka.py [--bootstrap HOST:PORT] [-n 100]
"""

from __future__ import annotations

import asyncio
import sys
import time
from argparse import Namespace

from _common import parse_args, record
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError


async def run(args: Namespace) -> int:
    # The topic is auto-created by the broker on the first produce (auto.create.topics.enable).
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        sends = []
        for i in range(args.count):
            key, value, headers = record(i)
            sends.append(await producer.send(args.topic, key=key, value=value, headers=headers))
        await asyncio.gather(*sends)
    except KafkaError as e:
        print(f"produce failed: {e}", file=sys.stderr)
        return 1
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: dict[bytes, tuple[bytes, list[tuple[str, bytes]]]] = {}
    deadline = time.monotonic() + args.timeout
    try:
        while len(seen) < args.count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for msg in batch:
                    seen[msg.key] = (msg.value, list(msg.headers))
        if seen:
            await consumer.commit()
    finally:
        await consumer.stop()

    ok = all(seen.get(k) == (v, h) for k, v, h in map(record, range(args.count)))
    status = "OK" if ok and len(seen) == args.count else "FAILED"
    print(f"aiokafka: produced {args.count}, consumed {len(seen)} intact to {args.topic} "
          f"via {args.bootstrap}: {status}")  # fmt: skip
    return 0 if status == "OK" else 1


def main() -> int:
    return asyncio.run(run(parse_args(__doc__ or "")))


if __name__ == "__main__":
    sys.exit(main())
