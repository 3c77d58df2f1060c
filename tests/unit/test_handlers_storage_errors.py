"""Handlers answer S3 trouble with a retriable code instead of failing the request (found by
`amq chaos trials`: S3 down while a partition opened closed a producer's connection)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from engine.broker.context import RequestContext
from engine.broker.handlers import fetch, list_offsets, produce
from engine.broker.latency import BrokerLatency
from engine.protocol import ErrorCode
from engine.protocol.messages import FetchRequest, ListOffsetsRequest, ProduceRequest
from engine.protocol.records import Record, build_batch
from engine.storage.objects.store import ObjectStoreError


class _Broker:
    """What the handlers use of a broker whose partitions cannot open: S3 is failing."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.router = SimpleNamespace(leader_to_proxy=lambda *_: None)
        self.config = SimpleNamespace(message_max_bytes=1 << 20)
        self.latency = BrokerLatency()

    def topic(self, _name: str) -> None:
        return None

    async def partition(self, _topic: str, _index: int) -> Any:
        raise ObjectStoreError("GET objects/1: 503 Service Unavailable")

    def count_client_bytes(self, *_: Any, **__: Any) -> None:
        pass


def _ctx() -> RequestContext:
    return RequestContext(_Broker(), 9, 1, "test", "127.0.0.1")  # type: ignore[arg-type]


def test_produce() -> None:
    data = ProduceRequest.PartitionProduceData(index=0, records=build_batch([Record(value=b"x")]))
    req = ProduceRequest(acks=-1, timeout_ms=1000, topic_data=[ProduceRequest.TopicProduceData("t", [data])])
    out = asyncio.run(produce.handle(_ctx(), req))
    assert out.responses[0].partition_responses[0].error_code == ErrorCode.KAFKA_STORAGE_ERROR


def test_fetch() -> None:
    part = FetchRequest.FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20)
    req = FetchRequest(max_wait_ms=0, min_bytes=1, max_bytes=1 << 20, topics=[FetchRequest.FetchTopic("t", [part])])
    out = asyncio.run(fetch.handle(_ctx(), req))
    assert out.responses[0].partitions[0].error_code == ErrorCode.KAFKA_STORAGE_ERROR


def test_list_offsets() -> None:
    part = ListOffsetsRequest.ListOffsetsPartition(partition_index=0, timestamp=-1)
    req = ListOffsetsRequest(topics=[ListOffsetsRequest.ListOffsetsTopic("t", [part])])
    out = asyncio.run(list_offsets.handle(_ctx(), req))
    assert out.topics[0].partitions[0].error_code == ErrorCode.KAFKA_STORAGE_ERROR
