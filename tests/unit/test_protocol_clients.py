"""Real clients against the codec: confluent-kafka (librdkafka), kafka-python, aiokafka.

A toy broker (asyncio, one thread, no storage) built only from engine.protocol answers
just enough for each client to produce, create topics and consume in a group. Every
frame a client sends must decode; produce data must parse (CRC included) to exactly
what was sent; the clients must accept our ApiVersions, Metadata, Produce, Fetch and
group responses. The frames are also checked in as golden bytes
(``protocol_fixtures/client_frames.json``, rewritten with
``python tests/unit/test_protocol_clients.py --record``) and decoded without clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.protocol import (
    ApiKey,
    FrameDecoder,
    ProtocolError,
    Request,
    UnsupportedVersion,
    api_versions_response,
    decode_request,
    encode_response,
    unsupported_version_response,
)
from engine.protocol import messages as m
from engine.protocol.records import Record, build_batch, decode_records, read_batches

FIXTURES = Path(__file__).with_name("protocol_fixtures") / "client_frames.json"
TOPIC = "amq-t"
STORED = [Record(b"k%d" % i, b"stored-value-%d" % i, [("h", b"%d" % i)], 1_700_000_000_000 + i) for i in range(3)]
STORED_BATCH = build_batch(STORED)


@dataclass
class Captured:
    client: str
    frame: bytes
    request: Request | None
    error: Exception | None


@dataclass
class ToyBroker:
    """Answers from engine.protocol types only; records every frame."""

    client: str = ""
    frames: list[Captured] = field(default_factory=list)
    port: int = 0
    generation: int = 0
    assignment: bytes = b""

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self.serve, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    raw = bytes(frame)
                    try:
                        req = decode_request(frame)
                    except UnsupportedVersion as e:
                        self.frames.append(Captured(self.client, raw, None, e))
                        if e.api_key == ApiKey.API_VERSIONS and e.header is not None:
                            writer.writelines(unsupported_version_response(e.header))
                        continue
                    except ProtocolError as e:
                        self.frames.append(Captured(self.client, raw, None, e))
                        continue
                    self.frames.append(Captured(self.client, raw, req, None))
                    resp = await self.answer(req)
                    if resp is not None:
                        writer.writelines(encode_response(req.header, resp))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def answer(self, req: Request) -> Any:
        b = req.body
        if isinstance(b, m.ApiVersionsRequest):
            return api_versions_response()
        if isinstance(b, m.MetadataRequest):
            names = [t.name or "" for t in b.topics] if b.topics else [TOPIC]
            P = m.MetadataResponse.MetadataResponsePartition
            return m.MetadataResponse(
                brokers=[m.MetadataResponse.MetadataResponseBroker(0, "127.0.0.1", self.port, None)],
                cluster_id="amq-test",
                controller_id=0,
                topics=[
                    m.MetadataResponse.MetadataResponseTopic(0, n, partitions=[P(0, 0, 0, 0, [0], [0], [])])
                    for n in names
                ],
            )
        if isinstance(b, m.InitProducerIdRequest):
            return m.InitProducerIdResponse(producer_id=4242, producer_epoch=0)
        if isinstance(b, m.ProduceRequest):
            if b.acks == 0:
                return None
            R = m.ProduceResponse
            return R(
                responses=[
                    R.TopicProduceResponse(
                        t.name, [R.PartitionProduceResponse(p.index, 0, 100) for p in t.partition_data]
                    )
                    for t in b.topic_data
                ]
            )
        if isinstance(b, m.FindCoordinatorRequest):
            return m.FindCoordinatorResponse(node_id=0, host="127.0.0.1", port=self.port)
        if isinstance(b, m.JoinGroupRequest):
            self.generation += 1
            member = b.member_id or "member-1"
            proto = b.protocols[0]
            return m.JoinGroupResponse(
                generation_id=self.generation,
                protocol_type=b.protocol_type,
                protocol_name=proto.name,
                leader=member,
                member_id=member,
                members=[m.JoinGroupResponse.JoinGroupResponseMember(member, b.group_instance_id, proto.metadata)],
            )
        if isinstance(b, m.SyncGroupRequest):
            mine = [a.assignment for a in b.assignments if a.member_id == b.member_id]
            if mine:
                self.assignment = mine[0]
            return m.SyncGroupResponse(
                protocol_type=b.protocol_type, protocol_name=b.protocol_name, assignment=self.assignment
            )
        if isinstance(b, m.OffsetFetchRequest):
            R2 = m.OffsetFetchResponse
            return R2(
                topics=[
                    R2.OffsetFetchResponseTopic(
                        t.name, [R2.OffsetFetchResponsePartition(p, -1, -1, "") for p in t.partition_indexes]
                    )
                    for t in b.topics or []
                ]
            )
        if isinstance(b, m.ListOffsetsRequest):
            R3 = m.ListOffsetsResponse
            return R3(
                topics=[
                    R3.ListOffsetsTopicResponse(
                        t.name,
                        [
                            R3.ListOffsetsPartitionResponse(p.partition_index, 0, -1, 0 if p.timestamp == -2 else 3)
                            for p in t.partitions
                        ],
                    )
                    for t in b.topics
                ]
            )
        if isinstance(b, m.FetchRequest):
            R4 = m.FetchResponse
            parts = []
            for t in b.topics:
                for p in t.partitions:
                    records = STORED_BATCH if p.fetch_offset < len(STORED) else None
                    parts.append((t.topic, R4.PartitionData(p.partition, 0, 3, 3, 0, records=records)))
            if all(pd.records is None for _, pd in parts):
                await asyncio.sleep(min(b.max_wait_ms, 100) / 1000)
            return R4(responses=[R4.FetchableTopicResponse(name, [pd]) for name, pd in parts])
        if isinstance(b, m.CreateTopicsRequest):
            R5 = m.CreateTopicsResponse
            return R5(topics=[R5.CreatableTopicResult(t.name, num_partitions=t.num_partitions) for t in b.topics])
        # Heartbeat, OffsetCommit, LeaveGroup and friends: the default (success) answer.
        return getattr(m, type(b).__name__.replace("Request", "Response"))()


@pytest.fixture
def broker() -> Iterator[ToyBroker]:
    b = ToyBroker()
    b.start()
    yield b
    b.stop()


def _check_frames(frames: list[Captured]) -> None:
    bad = [(c.client, c.frame[:8].hex(), repr(c.error)) for c in frames if c.error is not None]
    # An ApiVersions version newer than ours is the one error a client may provoke.
    assert all("UnsupportedVersion" in e and f.startswith("0012") for _, f, e in bad), bad


def _produced(frames: list[Captured]) -> list[Record]:
    out: list[Record] = []
    for c in frames:
        if c.request is not None and isinstance(c.request.body, m.ProduceRequest):
            for t in c.request.body.topic_data:
                for p in t.partition_data:
                    assert p.records is not None
                    read_batches(p.records)  # whole batches, CRC valid
                    out += decode_records(p.records)
    return out


def _wait(cond: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)


# -- confluent-kafka -----------------------------------------------------------------------------


def run_confluent(port: int) -> None:
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient, NewTopic

    conf = {"bootstrap.servers": f"127.0.0.1:{port}", "client.id": "ck-test&automq_az=az1"}
    for codec in ("zstd", "lz4", "none"):
        p = ck.Producer({**conf, "compression.type": codec, "enable.idempotence": True, "linger.ms": 5})
        delivered: list[Any] = []
        for i in range(3):
            p.produce(TOPIC, key=b"ck-%d" % i, value=b"v" * 200, headers=[("codec", codec.encode())],
                      on_delivery=lambda err, msg, d=delivered: d.append(err))
        assert p.flush(10) == 0
        assert delivered == [None, None, None]
    admin = AdminClient(conf)
    fut = admin.create_topics([NewTopic("ck-new", num_partitions=3, replication_factor=1)])
    fut["ck-new"].result(10)
    c = ck.Consumer({**conf, "group.id": "ck-group", "auto.offset.reset": "earliest"})
    c.subscribe([TOPIC])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append((msg.key(), msg.value(), msg.headers(), msg.offset()))
    c.close()
    assert got == [(r.key, r.value, r.headers, i) for i, r in enumerate(STORED)]


def test_confluent_kafka(broker: ToyBroker) -> None:
    broker.client = "confluent-kafka"
    run_confluent(broker.port)
    _check_frames(broker.frames)
    recs = _produced(broker.frames)
    assert [r.key for r in recs] == [b"ck-%d" % i for i in range(3)] * 3
    assert {r.headers[0][1] for r in recs} == {b"zstd", b"lz4", b"none"}
    assert any(c.request and c.request.header.client_id == "ck-test&automq_az=az1" for c in broker.frames)


# -- kafka-python ---------------------------------------------------------------------------------


def run_kafka_python(port: int) -> None:
    kafka = pytest.importorskip("kafka")
    from kafka.admin import KafkaAdminClient, NewTopic

    boot = f"127.0.0.1:{port}"
    for codec in ("gzip", "lz4", "zstd", None):
        p = kafka.KafkaProducer(bootstrap_servers=boot, compression_type=codec, linger_ms=5)
        futs = [p.send(TOPIC, key=b"kp-%d" % i, value=b"v" * 200, headers=[("codec", str(codec).encode())])
                for i in range(3)]
        p.flush(10)
        assert all(f.get(10) is not None for f in futs)
        p.close(5)
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic("kp-new", num_partitions=2, replication_factor=1)])
    admin.close()
    c = kafka.KafkaConsumer(TOPIC, bootstrap_servers=boot, group_id="kp-group", auto_offset_reset="earliest")
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        for batch in c.poll(200).values():
            got += [(r.key, r.value, [tuple(h) for h in r.headers], r.offset) for r in batch]
    c.close()
    assert got[:3] == [(r.key, r.value, r.headers, i) for i, r in enumerate(STORED)]


def test_kafka_python(broker: ToyBroker) -> None:
    broker.client = "kafka-python"
    run_kafka_python(broker.port)
    _check_frames(broker.frames)
    recs = _produced(broker.frames)
    assert [r.key for r in recs] == [b"kp-%d" % i for i in range(3)] * 4


# -- aiokafka -------------------------------------------------------------------------------------


def run_aiokafka(port: int) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    boot = f"127.0.0.1:{port}"

    async def go() -> None:
        for codec in ("snappy", "gzip", None):
            p = aiokafka.AIOKafkaProducer(bootstrap_servers=boot, compression_type=codec)
            await p.start()
            try:
                for i in range(3):
                    await p.send_and_wait(TOPIC, key=b"ak-%d" % i, value=b"v" * 200,
                                          headers=[("codec", str(codec).encode())])
            finally:
                await p.stop()
        c = aiokafka.AIOKafkaConsumer(TOPIC, bootstrap_servers=boot, group_id="ak-group",
                                      auto_offset_reset="earliest")
        await c.start()
        got: list[Any] = []
        try:
            async with asyncio.timeout(20):
                while len(got) < 3:
                    for batch in (await c.getmany(timeout_ms=200)).values():
                        got += [(r.key, r.value, list(r.headers), r.offset) for r in batch]
        finally:
            await c.stop()
        assert got[:3] == [(r.key, r.value, r.headers, i) for i, r in enumerate(STORED)]

    asyncio.run(go())


def test_aiokafka(broker: ToyBroker) -> None:
    broker.client = "aiokafka"
    run_aiokafka(broker.port)
    _check_frames(broker.frames)
    recs = _produced(broker.frames)
    assert [r.key for r in recs] == [b"ak-%d" % i for i in range(3)] * 3


# -- kcat ----------------------------------------------------------------------------------------------


def test_kcat(broker: ToyBroker) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.skip("kcat is not installed")
    broker.client = "kcat"
    boot = f"127.0.0.1:{broker.port}"
    subprocess.run(
        [kcat, "-b", boot, "-P", "-t", TOPIC, "-K", ":", "-z", "lz4", "-H", "src=kcat"],
        input=b"kc-0:one\nkc-1:two\n", check=True, timeout=30,
    )
    out = subprocess.run(
        [kcat, "-b", boot, "-C", "-t", TOPIC, "-p", "0", "-o", "beginning", "-c", "3", "-f", "%k=%s@%o\\n"],
        check=True, timeout=30, capture_output=True,
    ).stdout
    assert out.decode().split() == [f"k{i}=stored-value-{i}@{i}" for i in range(3)]
    _check_frames(broker.frames)
    recs = _produced(broker.frames)
    assert [(r.key, r.value, r.headers) for r in recs] == [
        (b"kc-0", b"one", [("src", b"kcat")]), (b"kc-1", b"two", [("src", b"kcat")])
    ]


# -- golden frames ----------------------------------------------------------------------------------


def _load_fixtures() -> list[dict[str, Any]]:
    if not FIXTURES.exists():
        return []
    return json.loads(FIXTURES.read_text())  # type: ignore[no-any-return]


GOLDEN = _load_fixtures()


@pytest.mark.parametrize(
    "entry", GOLDEN, ids=[f"{e['client']}-{e['api']}-v{e['version']}-{i}" for i, e in enumerate(GOLDEN)]
)
def test_golden_client_frames_decode(entry: dict[str, Any]) -> None:
    frame = bytes.fromhex(entry["frame"])
    req = decode_request(frame)
    assert (ApiKey(req.api_key).name, req.api_version) == (entry["api"], entry["version"])
    assert type(req.body).__name__ == entry["type"]
    if isinstance(req.body, m.ProduceRequest):
        for t in req.body.topic_data:
            for p in t.partition_data:
                assert p.records is not None
                assert len(decode_records(p.records)) > 0


def test_golden_frames_cover_the_clients() -> None:
    if not GOLDEN:
        pytest.skip("no fixtures recorded")
    seen = {(e["client"], e["api"]) for e in GOLDEN}
    for client in ("confluent-kafka", "kafka-python", "aiokafka"):
        for api in ("API_VERSIONS", "METADATA", "PRODUCE", "FETCH", "JOIN_GROUP", "SYNC_GROUP"):
            assert (client, api) in seen


def record() -> None:
    """Capture the first frame of each (client, api, version) and write the fixtures."""
    entries: list[dict[str, Any]] = []
    for name, run in (("confluent-kafka", run_confluent), ("kafka-python", run_kafka_python),
                      ("aiokafka", run_aiokafka)):
        b = ToyBroker(client=name)
        b.start()
        try:
            run(b.port)
        finally:
            b.stop()
        seen: set[tuple[str, int, str]] = set()
        for c in b.frames:
            if c.request is None:
                continue
            key = (ApiKey(c.request.api_key).name, c.request.api_version, type(c.request.body).__name__)
            # Produce: keep one frame per compression codec.
            if isinstance(c.request.body, m.ProduceRequest):
                recs = c.request.body.topic_data[0].partition_data[0].records
                assert recs is not None
                key = (*key[:2], key[2] + ":" + read_batches(recs)[0].compression.name)
            if key in seen:
                continue
            seen.add(key)
            entries.append({"client": name, "api": key[0], "version": key[1], "type": key[2].split(":")[0],
                            "frame": c.frame.hex()})
    FIXTURES.parent.mkdir(exist_ok=True)
    FIXTURES.write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {len(entries)} frames to {FIXTURES}")


if __name__ == "__main__":
    if "--record" in sys.argv:
        with contextlib.suppress(KeyboardInterrupt):
            record()
