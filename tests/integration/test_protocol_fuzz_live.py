"""Fuzzed frames against a live broker: each gets an answer or a closed connection, the broker
stays alive, keeps answering other clients, and its memory stays bounded (benchmarks/fuzz.py runs
the same for a million frames; RELIABILITY.md)."""

from __future__ import annotations

import asyncio
import struct

from confluent_kafka.admin import AdminClient, NewTopic

from engine.broker.server import MAX_CONTROL_FRAME
from engine.devtools.fuzz import STATE_CHANGING, FrameFuzzer, clients_work, run_live
from engine.protocol import SUPPORTED_APIS, ApiKey
from engine.protocol.headers import RequestHeader, encode_request_header
from tests.integration.cluster_fixture import LocalCluster, unique
from tests.integration.test_broker_robustness import healthy


def test_an_oversized_request_of_a_control_api_is_refused_before_decoding(broker_cluster: LocalCluster) -> None:
    # Found by the fuzzer's "repeat" mutation: a Metadata request of 2-byte topic entries decodes
    # into ~30 bytes of Python objects per byte, so a 100 MiB frame would have cost GiBs.
    n = MAX_CONTROL_FRAME // 2 + 1
    body = bytes([0x81, 0x80, 0x80, 0x02]) + bytes([0x01, 0x00]) * n  # compact count (4M+), then entries
    frame = encode_request_header(RequestHeader(ApiKey.METADATA, 9, 1, "x")) + body
    with broker_cluster.wire() as good, broker_cluster.wire() as bad:
        bad.send_raw(struct.pack(">i", len(frame)) + frame)
        assert bad.closed_by_peer(10)
        healthy(good)


def test_fuzzed_frames_leave_the_broker_serving(broker_cluster: LocalCluster) -> None:
    topic = unique("fuzz")
    admin = AdminClient({"bootstrap.servers": broker_cluster.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    apis = sorted(k for k in SUPPORTED_APIS if k not in STATE_CHANGING)
    fuzzer = FrameFuzzer(11, topics=[topic], apis=apis, bombs=False)
    rep = asyncio.run(
        run_live("127.0.0.1", broker_cluster.port, 2500, pid=broker_cluster.broker_pid(0),
                 metrics_url=broker_cluster.metrics_url, fuzzer=fuzzer, probe_every=500)
    )  # fmt: skip
    assert rep.crashes == 0, rep.failures
    assert rep.handler_errors == 0
    assert rep.answered > 100 and rep.closed > 100  # both paths were taken
    assert rep.rss_after is not None and rep.rss_before is not None
    assert rep.rss_after - rep.rss_before < 150 << 20
    assert clients_work(broker_cluster.bootstrap, unique("after")) is None
