"""Idempotent producer + consumer group with confluent-kafka (librdkafka) against a local amq cluster.

python examples/produce_consume_confluent.py [--bootstrap HOST:PORT] [-n 100]
"""

from __future__ import annotations

import sys
import time

from _common import parse_args, record
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> int:
    args = parse_args(__doc__ or "")
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    futures = admin.create_topics([NewTopic(args.topic, num_partitions=3)], request_timeout=15)
    try:
        futures[args.topic].result(timeout=20)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            print(f"cannot create topic {args.topic}: {e.args[0].str()}", file=sys.stderr)
            return 1

    # enable.idempotence: the broker drops retried duplicates, so each record is stored once.
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})
    failed: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failed.append(err.str())

    for i in range(args.count):
        key, value, headers = record(i)
        producer.produce(args.topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
        producer.poll(0)
    if producer.flush(30) != 0 or failed:
        print(f"produce failed: {failed[:1] or 'flush timed out'}", file=sys.stderr)
        return 1

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    seen: dict[bytes, tuple[bytes, list[tuple[str, bytes]]]] = {}
    deadline = time.monotonic() + args.timeout
    try:
        while len(seen) < args.count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen[msg.key()] = (msg.value(), list(msg.headers() or []))
        if seen:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    ok = all(seen.get(k) == (v, h) for k, v, h in map(record, range(args.count)))
    status = "OK" if ok and len(seen) == args.count else "FAILED"
    print(f"confluent-kafka: produced {args.count}, consumed {len(seen)} intact to {args.topic} "
          f"via {args.bootstrap}: {status}")  # fmt: skip
    return 0 if status == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
