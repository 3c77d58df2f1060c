"""Real clients against a real local cluster: confluent-kafka, kafka-python, aiokafka, kcat."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from tests.integration.cluster_fixture import LocalCluster, unique

TIMEOUT = 30


def admin(c: LocalCluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": c.bootstrap})


def create(c: LocalCluster, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
    a = admin(c)  # referenced until the result is in: a collected client cancels its requests
    a.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(TIMEOUT)
    return name


def produce(c: LocalCluster, topic: str, records: list[dict[str, Any]], **conf: Any) -> list[Any]:
    p = Producer({"bootstrap.servers": c.bootstrap, "linger.ms": 5, **conf})
    delivered: list[Any] = []
    for r in records:
        p.produce(topic, on_delivery=lambda err, msg: delivered.append(err or msg), **r)
    assert p.flush(TIMEOUT) == 0
    return delivered


def consume(c: LocalCluster, topic: str, partition: int, count: int, offset: int = 0, **conf: Any) -> list[Any]:
    consumer = CKConsumer({"bootstrap.servers": c.bootstrap, "group.id": "unused", "enable.auto.commit": False, **conf})
    consumer.assign([TopicPartition(topic, partition, offset)])
    out: list[Any] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in consumer.consume(count - len(out), timeout=1):
                assert m.error() is None, m.error()
                out.append(m)
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_round_trip_keys_headers_nulls(broker_cluster: LocalCluster, codec: str) -> None:
    topic = create(broker_cluster, unique(codec))
    records = [
        {
            "key": f"k{i}".encode() if i % 3 else None,
            "value": None if i % 7 == 0 else f"value-{i}".encode() * 5,
            "headers": [("h", f"{i}".encode()), ("empty", None)] if i % 2 else None,
        }
        for i in range(300)
    ]
    delivered = produce(broker_cluster, topic, records, **{"compression.type": codec, "enable.idempotence": True})
    assert all(not isinstance(d, KafkaError) for d in delivered)
    got = consume(broker_cluster, topic, 0, len(records))
    assert [m.offset() for m in got] == list(range(300))
    for r, m in zip(records, got, strict=True):
        assert (m.key(), m.value()) == (r["key"], r["value"])
        assert (m.headers() or None) == (r["headers"] or None)


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_confluent_acks(broker_cluster: LocalCluster, acks: str) -> None:
    topic = create(broker_cluster, unique(f"acks{acks}"))
    delivered = produce(broker_cluster, topic, [{"value": str(i).encode()} for i in range(100)], acks=acks)
    assert not [d for d in delivered if isinstance(d, KafkaError)]
    if acks != "0":  # with acks=0 the client never learns offsets
        assert sorted(m.offset() for m in delivered) == list(range(100))
    assert [m.value() for m in consume(broker_cluster, topic, 0, 100)] == [str(i).encode() for i in range(100)]


def test_confluent_admin_and_error_codes(broker_cluster: LocalCluster) -> None:
    a = admin(broker_cluster)
    name = unique("adm")
    bad = {
        name: NewTopic(name, 2, 1, config={"retention.ms": "3600000"}),
        "bad name!": NewTopic("bad name!", 1, 1),
        unique("rf"): NewTopic(unique("x"), 1, 3),
        unique("cfg"): NewTopic(unique("cfg"), 1, 1, config={"no.such.config": "1"}),
        unique("val"): NewTopic(unique("val"), 1, 1, config={"message.timestamp.type": "Whenever"}),
    }
    futures = a.create_topics(list(bad.values()))
    codes = {}
    for t, f in futures.items():
        try:
            f.result(TIMEOUT)
            codes[t] = KafkaError.NO_ERROR
        except KafkaException as e:
            codes[t] = e.args[0].code()
    assert sorted(codes.values()) == sorted(
        [
            KafkaError.NO_ERROR,
            KafkaError.TOPIC_EXCEPTION,
            KafkaError.INVALID_REPLICATION_FACTOR,
            KafkaError.INVALID_CONFIG,
            KafkaError.INVALID_CONFIG,
        ]
    )
    with pytest.raises(KafkaException) as e:
        a.create_topics([NewTopic(name, 1, 1)])[name].result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(KafkaException) as e:
        a.create_partitions([NewPartitions(name, 1)])[name].result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    a.create_partitions([NewPartitions(name, 4)])[name].result(TIMEOUT)
    assert len(a.list_topics(name, timeout=TIMEOUT).topics[name].partitions) == 4

    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    cfg = a.describe_configs([res])[res].result(TIMEOUT)
    assert cfg["retention.ms"].value == "3600000" and not cfg["retention.ms"].is_default
    assert cfg["cleanup.policy"].value == "delete" and cfg["cleanup.policy"].is_default
    res.add_incremental_config(ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE))
    res.add_incremental_config(ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET))
    a.incremental_alter_configs([res])[res].result(TIMEOUT)
    cfg = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
    cfg = next(iter(cfg.values())).result(TIMEOUT)
    assert cfg["retention.ms"].is_default and cfg["max.message.bytes"].value == "2000000"
    broker_cfg = a.describe_configs([ConfigResource(ConfigResource.Type.BROKER, "0")])
    assert next(iter(broker_cfg.values())).result(TIMEOUT)["num.partitions"].value == "1"
    unknown = ConfigResource(ConfigResource.Type.TOPIC, unique("missing"))
    with pytest.raises(KafkaException) as e:
        a.describe_configs([unknown])[unknown].result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    cluster = a.describe_cluster().result(TIMEOUT)
    assert [n.id for n in cluster.nodes] == [0] and cluster.controller.id == 0
    a.delete_topics([name])[name].result(TIMEOUT)
    assert name not in a.list_topics(timeout=TIMEOUT).topics
    with pytest.raises(KafkaException) as e:
        a.delete_topics([name])[name].result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_log_append_time_topic(broker_cluster: LocalCluster) -> None:
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

    topic = create(broker_cluster, unique("lat"), config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    produce(broker_cluster, topic, [{"value": b"x", "timestamp": 1000}, {"value": b"y", "timestamp": 2000}])
    after = int(time.time() * 1000)
    for m in consume(broker_cluster, topic, 0, 2):
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME and before <= ts <= after


def test_list_offsets_by_timestamp_and_delete_records(broker_cluster: LocalCluster) -> None:
    topic = create(broker_cluster, unique("ts"))
    base = 1_700_000_000_000
    produce(
        broker_cluster,
        topic,
        [{"value": str(i).encode(), "timestamp": base + 10 * i} for i in range(50)],
        **{"batch.num.messages": 7},
    )
    consumer = CKConsumer({"bootstrap.servers": broker_cluster.bootstrap, "group.id": "unused"})
    try:
        for ts, offset in [(0, 0), (base + 10 * 20, 20), (base + 10 * 20 + 5, 21), (base + 10 * 49, 49)]:
            (found,) = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=TIMEOUT)
            assert found.offset == offset, ts
        (past,) = consumer.offsets_for_times([TopicPartition(topic, 0, base + 10_000)], timeout=TIMEOUT)
        assert past.offset == -1  # no record that late: the end
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT) == (0, 50)

        a = admin(broker_cluster)
        result = a.delete_records([TopicPartition(topic, 0, 30)])
        assert next(iter(result.values())).result(TIMEOUT).low_watermark == 30
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT) == (30, 50)
        (early,) = consumer.offsets_for_times([TopicPartition(topic, 0, base)], timeout=TIMEOUT)
        assert early.offset == 30  # the first record still readable
    finally:
        consumer.close()
    got = consume(broker_cluster, topic, 0, 20, offset=-2)  # OFFSET_BEGINNING
    assert [m.offset() for m in got] == list(range(30, 50))


def test_kafka_python_round_trip_and_admin(broker_cluster: LocalCluster) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP
    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType
    from kafka.admin import NewTopic as KNewTopic
    from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError

    a = KafkaAdminClient(bootstrap_servers=broker_cluster.bootstrap, request_timeout_ms=TIMEOUT * 1000)
    try:
        name = unique("kp")
        a.create_topics([KNewTopic(name, 2, 1, topic_configs={"segment.ms": "100000"})])
        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics([KNewTopic(name, 2, 1)])
        with pytest.raises(InvalidPartitionsError):
            a.create_topics([KNewTopic(unique("kp0"), 0, 1)])
        described = a.describe_configs([KConfigResource(ConfigResourceType.TOPIC, name)])
        assert "segment.ms" in str(described)
        producer = KafkaProducer(
            bootstrap_servers=broker_cluster.bootstrap, acks="all", compression_type="gzip", enable_idempotence=True
        )
        metas = [producer.send(name, key=b"k", value=f"v{i}".encode(), partition=1) for i in range(20)]
        producer.flush(TIMEOUT)
        assert [m.get(TIMEOUT).offset for m in metas] == list(range(20))
        producer.close()
        consumer = KafkaConsumer(
            bootstrap_servers=broker_cluster.bootstrap,
            consumer_timeout_ms=5000,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        consumer.assign([KTP(name, 1)])
        values = [m.value for _, m in zip(range(20), consumer, strict=False)]
        consumer.close()
        assert values == [f"v{i}".encode() for i in range(20)]
        a.delete_topics([name])
    finally:
        a.close()


def test_aiokafka_round_trip(broker_cluster: LocalCluster) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATP

    topic = create(broker_cluster, unique("aio"))

    async def go() -> list[tuple[bytes | None, bytes | None]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker_cluster.bootstrap, compression_type="lz4", enable_idempotence=True
        )
        await producer.start()
        try:
            for i in range(30):
                await producer.send_and_wait(topic, value=f"a{i}".encode(), key=None if i % 2 else b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker_cluster.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([ATP(topic, 0)])
            out: list[tuple[bytes | None, bytes | None]] = []
            while len(out) < 30:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), TIMEOUT)
                for msgs in batch.values():
                    out += [(m.key, m.value) for m in msgs]
            return out
        finally:
            await consumer.stop()

    got = asyncio.run(go())
    assert got == [(None if i % 2 else b"k", f"a{i}".encode()) for i in range(30)]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat)")
def test_kcat_round_trip_and_metadata(broker_cluster: LocalCluster) -> None:
    topic = unique("kcat")  # auto-created by Metadata
    lines = "".join(f"k{i}:v{i}\n" for i in range(10))
    subprocess.run(
        ["kcat", "-b", broker_cluster.bootstrap, "-t", topic, "-P", "-K:", "-z", "snappy"],
        input=lines.encode(),
        check=True,
        timeout=TIMEOUT,
    )
    out = subprocess.run(
        ["kcat", "-b", broker_cluster.bootstrap, "-t", topic, "-C", "-e", "-f", "%k=%s@%o\n"],
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.decode()
    assert out.splitlines() == [f"k{i}=v{i}@{i}" for i in range(10)]
    meta = json.loads(
        subprocess.run(
            ["kcat", "-b", broker_cluster.bootstrap, "-L", "-J"], capture_output=True, check=True, timeout=TIMEOUT
        ).stdout
    )
    assert topic in [t["topic"] for t in meta["topics"]]
    assert not [t for t in meta["topics"] if t["topic"].startswith("__")]  # internal topics stay hidden


def test_metrics_endpoint(broker_cluster: LocalCluster) -> None:
    with urllib.request.urlopen(broker_cluster.metrics_url, timeout=5) as r:
        m = json.loads(r.read())
    for key in (
        "s3_put_requests",
        "s3_put_bytes",
        "s3_get_requests",
        "wal_bytes_written",
        "cross_zone_bytes",
        "requests_total",
        "bytes_in",
        "bytes_out",
    ):
        assert isinstance(m[key], int), key
    assert m["cross_zone_bytes"] == 0 and m["wal_kind"] == "file" and m["zone"] == "az1"
