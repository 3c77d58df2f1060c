"""Bad bytes get an error answer or a closed connection, and never stop the broker serving others."""

from __future__ import annotations

import struct
import threading
import time

import pytest
from confluent_kafka import Producer

from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest
from tests.integration.cluster_fixture import KafkaWire, LocalCluster, unique


def healthy(w: KafkaWire) -> None:
    res = w.call(ApiKey.METADATA, 9, MetadataRequest(topics=None))
    assert [b.node_id for b in res.brokers] == [0]


def header(api_key: int, version: int, cid: int = 7) -> bytes:
    return struct.pack(">hhih", api_key, version, cid, 4) + b"test"


BAD_INPUTS = {
    "2 GiB size prefix": struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64,
    "negative size": struct.pack(">i", -5),
    "size below a header": struct.pack(">i", 3) + b"abc",
    "unknown api key": struct.pack(">i", 14) + header(999, 0),
    "unsupported version": struct.pack(">i", 14) + header(ApiKey.METADATA, 99),
    "garbage body": struct.pack(">i", 14 + 5) + header(ApiKey.METADATA, 9) + b"\xff\xff\xff\xff\x01",
    "bad header": struct.pack(">i", 9) + struct.pack(">hhi", 3, 9, 1) + b"\xff",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_frames_close_only_their_connection(broker_cluster: LocalCluster, name: str) -> None:
    with broker_cluster.wire() as good, broker_cluster.wire() as bad:
        healthy(good)
        bad.send_raw(BAD_INPUTS[name])
        assert bad.closed_by_peer(), name
        healthy(good)


def test_truncated_frame_then_hang_up(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as good:
        for _ in range(3):
            with broker_cluster.wire() as bad:
                bad.send_raw(struct.pack(">i", 1000) + header(ApiKey.METADATA, 9))
        with broker_cluster.wire() as slow:
            slow.send_raw(struct.pack(">i", 1000))  # a frame that never completes does not block others
            healthy(good)
        healthy(good)


def test_unsupported_api_versions_version_gets_a_v0_answer(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        w.send_raw(struct.pack(">i", 16) + header(ApiKey.API_VERSIONS, 99, cid=42) + b"\x00\x00")
        frame = w.recv_frame()
        assert struct.unpack(">i", frame[:4])[0] == 42
        from engine.protocol.codec import decode_response_body

        body = decode_response_body(ApiKey.API_VERSIONS, 0, frame[4:])
        assert isinstance(body, ApiVersionsResponse)
        assert body.error_code == ErrorCode.UNSUPPORTED_VERSION
        assert {k.api_key for k in body.api_keys} >= {ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.API_VERSIONS}
        # The connection stays usable: the client retries with a version it now knows.
        assert w.call(ApiKey.API_VERSIONS, 3, ApiVersionsRequest("t", "1")).error_code == 0


def test_pipelined_requests_are_answered_in_order(broker_cluster: LocalCluster) -> None:
    with broker_cluster.wire() as w:
        for _ in range(20):
            w.send(ApiKey.API_VERSIONS, 3, ApiVersionsRequest("t", "1"))
        cids = [struct.unpack(">i", w.recv_frame()[:4])[0] for _ in range(20)]
        assert cids == list(range(1, 21))


def test_a_producer_keeps_working_while_others_send_garbage(broker_cluster: LocalCluster) -> None:
    topic = unique("busy")
    p = Producer({"bootstrap.servers": broker_cluster.bootstrap, "linger.ms": 2, "acks": "all"})
    delivered: list[object] = []
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            for data in BAD_INPUTS.values():
                try:
                    with broker_cluster.wire(timeout=2) as bad:
                        bad.send_raw(data)
                        bad.closed_by_peer(timeout=2)
                except OSError:
                    pass

    t = threading.Thread(target=attack)
    t.start()
    try:
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline:
            p.produce(topic, value=str(i).encode(), on_delivery=lambda e, m: delivered.append(e or m.offset()))
            p.poll(0.01)
            i += 1
        assert p.flush(30) == 0
    finally:
        stop.set()
        t.join()
    assert sorted(d for d in delivered if isinstance(d, int)) == list(range(i))
