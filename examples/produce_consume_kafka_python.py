"""Producer + consumer group with kafka-python against a local amq cluster.

python examples/produce_consume_kafka_python.py [--bootstrap HOST:PORT] [-n 100]
"""

from __future__ import annotations

import sys
import time

from _common import parse_args, record
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError


def main() -> int:
    args = parse_args(__doc__ or "")
    # The topic is auto-created by the broker on the first produce (auto.create.topics.enable).
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", retries=5)
    try:
        futures = []
        for i in range(args.count):
            key, value, headers = record(i)
            futures.append(producer.send(args.topic, key=key, value=value, headers=headers))
        producer.flush(30)
        for f in futures:
            f.get(timeout=30)
    except KafkaError as e:
        print(f"produce failed: {e}", file=sys.stderr)
        return 1
    finally:
        producer.close(10)

    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen: dict[bytes, tuple[bytes, list[tuple[str, bytes]]]] = {}
    deadline = time.monotonic() + args.timeout
    try:
        while len(seen) < args.count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for msg in batch:
                    seen[msg.key] = (msg.value, list(msg.headers))
        if seen:
            consumer.commit()
    finally:
        consumer.close()

    ok = all(seen.get(k) == (v, h) for k, v, h in map(record, range(args.count)))
    status = "OK" if ok and len(seen) == args.count else "FAILED"
    print(f"kafka-python: produced {args.count}, consumed {len(seen)} intact to {args.topic} "
          f"via {args.bootstrap}: {status}")  # fmt: skip
    return 0 if status == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
