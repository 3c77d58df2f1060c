"""What clients do not easily show, checked on the wire: long polls, sequence checks, error codes."""

from __future__ import annotations

import struct
import threading
import time

from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import (
    CreateTopicsRequest,
    FetchRequest,
    InitProducerIdRequest,
    ListOffsetsRequest,
    MetadataRequest,
    OffsetForLeaderEpochRequest,
    ProduceRequest,
)
from engine.protocol.records import Record, build_batch, read_batches
from tests.integration.cluster_fixture import KafkaWire, LocalCluster, unique

FETCH_V = 12
PRODUCE_V = 9


def make_topic(w: KafkaWire, partitions: int = 1) -> str:
    name = unique("wire")
    res = w.call(
        ApiKey.CREATE_TOPICS,
        7,
        CreateTopicsRequest(
            topics=[CreateTopicsRequest.CreatableTopic(name=name, num_partitions=partitions, replication_factor=1)]
        ),
    )
    assert res.topics[0].error_code == 0
    return name


def produce(w: KafkaWire, topic: str, records: bytes, acks: int = -1) -> tuple[int, int]:
    req = ProduceRequest(
        acks=acks,
        timeout_ms=10_000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name=topic, partition_data=[ProduceRequest.PartitionProduceData(index=0, records=records)]
            )
        ],
    )
    p = w.call(ApiKey.PRODUCE, PRODUCE_V, req).responses[0].partition_responses[0]
    return p.error_code, p.base_offset


def fetch(w: KafkaWire, topic: str, offset: int, max_wait_ms: int = 0, min_bytes: int = 1, **kw: int) -> object:
    req = FetchRequest(
        max_wait_ms=max_wait_ms,
        min_bytes=min_bytes,
        max_bytes=kw.get("max_bytes", 1 << 20),
        topics=[
            FetchRequest.FetchTopic(
                topic=topic,
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=0, fetch_offset=offset, partition_max_bytes=kw.get("partition_max_bytes", 1 << 20)
                    )
                ],
            )
        ],
    )
    return w.call(ApiKey.FETCH, FETCH_V, req).responses[0].partitions[0]


def records(n: int = 2, **kw: int) -> bytes:
    return build_batch([Record(b"k", f"v{i}".encode()) for i in range(n)], **kw)  # type: ignore[arg-type]


def test_long_poll_waits_for_max_wait_then_answers_empty(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        topic = make_topic(w)
        t0 = time.monotonic()
        p = fetch(w, topic, 0, max_wait_ms=600)
        elapsed = time.monotonic() - t0
        assert p.error_code == 0 and p.high_watermark == 0  # type: ignore[attr-defined]
        assert 0.55 <= elapsed < 2.0
        t0 = time.monotonic()
        fetch(w, topic, 0, max_wait_ms=0)
        assert time.monotonic() - t0 < 0.5


def test_long_poll_returns_as_soon_as_data_arrives(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w, broker_cluster.wire() as producer:
        topic = make_topic(w)
        timer = threading.Timer(0.3, lambda: produce(producer, topic, records(3)))
        timer.start()
        t0 = time.monotonic()
        p = fetch(w, topic, 0, max_wait_ms=5000)
        elapsed = time.monotonic() - t0
        timer.join()
        assert 0.25 <= elapsed < 2.0
        assert p.high_watermark == 3  # type: ignore[attr-defined]
        assert read_batches(bytes(p.records))[0].record_count == 3  # type: ignore[attr-defined]


def test_min_bytes_waits_for_enough_data(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        topic = make_topic(w)
        produce(w, topic, records(1))
        t0 = time.monotonic()
        p = fetch(w, topic, 0, max_wait_ms=500, min_bytes=1 << 20)
        assert time.monotonic() - t0 >= 0.45
        assert len(p.records) > 0  # type: ignore[attr-defined]  # what there is, at max_wait


def test_fetch_limits_and_offset_out_of_range(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        topic = make_topic(w)
        for _ in range(5):
            produce(w, topic, build_batch([Record(None, b"x" * 1000)]))
        one = fetch(w, topic, 0, partition_max_bytes=10)  # too small: the first batch still comes
        assert len(read_batches(bytes(one.records))) == 1  # type: ignore[attr-defined]
        three = fetch(w, topic, 0, max_bytes=3300)
        assert len(read_batches(bytes(three.records))) == 3  # type: ignore[attr-defined]
        mid = fetch(w, topic, 3)
        assert read_batches(bytes(mid.records))[0].base_offset == 3  # type: ignore[attr-defined]
        assert fetch(w, topic, 6).error_code == ErrorCode.OFFSET_OUT_OF_RANGE  # type: ignore[attr-defined]
        assert fetch(w, topic, -1).error_code == ErrorCode.OFFSET_OUT_OF_RANGE  # type: ignore[attr-defined]


def test_idempotent_duplicate_and_gap(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        topic = make_topic(w)
        init = w.call(
            ApiKey.INIT_PRODUCER_ID, 2, InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=1)
        )
        assert init.error_code == 0 and init.producer_id >= 0
        pid = init.producer_id
        assert produce(w, topic, records(2, producer_id=pid, producer_epoch=0, base_sequence=0)) == (0, 0)
        assert produce(w, topic, records(3, producer_id=pid, producer_epoch=0, base_sequence=2)) == (0, 2)
        # A retry of an acknowledged batch: the original offset, nothing stored twice.
        assert produce(w, topic, records(2, producer_id=pid, producer_epoch=0, base_sequence=0)) == (0, 0)
        code, _ = produce(w, topic, records(1, producer_id=pid, producer_epoch=0, base_sequence=9))
        assert code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert fetch(w, topic, 0).high_watermark == 5  # type: ignore[attr-defined]
        assert produce(w, topic, records(1, producer_id=pid, producer_epoch=0, base_sequence=5)) == (0, 5)
        other = w.call(ApiKey.INIT_PRODUCER_ID, 2, InitProducerIdRequest(transactional_id=None))
        assert other.producer_id != pid


def test_produce_errors(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        topic = make_topic(w)
        # A magic 1 message set (what Produce v0-2 clients send): refused, not stored.
        legacy = struct.pack(">qi", 0, 22) + struct.pack(">IbbqiI", 0, 1, 0, 0, -1, 2) + b"hi"
        assert produce(w, topic, legacy)[0] == ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT
        corrupt = bytearray(records(2))
        corrupt[-1] ^= 0xFF
        assert produce(w, topic, bytes(corrupt))[0] == ErrorCode.CORRUPT_MESSAGE
        assert produce(w, topic, records(1), acks=2)[0] == ErrorCode.INVALID_REQUIRED_ACKS
        assert produce(w, unique("missing"), records(1))[0] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        assert fetch(w, topic, 0).high_watermark == 0  # type: ignore[attr-defined]


def test_list_offsets_and_leader_epochs(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        topic = make_topic(w)
        produce(w, topic, records(4))
        meta = w.call(ApiKey.METADATA, 11, MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=topic)]))
        epoch = meta.topics[0].partitions[0].leader_epoch

        def list_offset(ts: int, leader_epoch: int = -1) -> object:
            req = ListOffsetsRequest(
                replica_id=-1,
                topics=[
                    ListOffsetsRequest.ListOffsetsTopic(
                        name=topic, partitions=[ListOffsetsRequest.ListOffsetsPartition(0, leader_epoch, ts)]
                    )
                ],
            )
            return w.call(ApiKey.LIST_OFFSETS, 6, req).topics[0].partitions[0]

        latest = list_offset(-1)
        assert (latest.offset, latest.leader_epoch) == (4, epoch)  # type: ignore[attr-defined]
        assert list_offset(-2).offset == 0  # type: ignore[attr-defined]
        assert list_offset(-1, epoch + 1).error_code == ErrorCode.UNKNOWN_LEADER_EPOCH  # type: ignore[attr-defined]
        if epoch > 0:
            assert list_offset(-1, epoch - 1).error_code == ErrorCode.FENCED_LEADER_EPOCH  # type: ignore[attr-defined]
        req = OffsetForLeaderEpochRequest(
            topics=[
                OffsetForLeaderEpochRequest.OffsetForLeaderTopic(
                    topic=topic, partitions=[OffsetForLeaderEpochRequest.OffsetForLeaderPartition(0, -1, epoch)]
                )
            ]
        )
        end = w.call(ApiKey.OFFSET_FOR_LEADER_EPOCH, 4, req).topics[0].partitions[0]
        assert (end.error_code, end.leader_epoch, end.end_offset) == (0, epoch, 4)


def test_metadata_auto_creates_valid_names_only(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        name = unique("auto")
        req = MetadataRequest(
            topics=[
                MetadataRequest.MetadataRequestTopic(name=name),
                MetadataRequest.MetadataRequestTopic(name="bad name"),
            ]
        )
        res = w.call(ApiKey.METADATA, 11, req)
        good, bad = res.topics
        assert good.error_code == 0 and len(good.partitions) == 1 and good.partitions[0].leader_id == 0
        assert bad.error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
        req = MetadataRequest(
            topics=[MetadataRequest.MetadataRequestTopic(name=unique("no"))], allow_auto_topic_creation=False
        )
        assert w.call(ApiKey.METADATA, 11, req).topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
