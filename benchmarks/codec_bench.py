"""Kafka codec hot paths: amq's generated codec (engine.protocol) against kio.

    python benchmarks/codec_bench.py [--seconds 1.0]

Cases (each side builds its own typed objects, so construction is part of the cost,
as it is in a broker):

- produce-decode: a ProduceRequest v9 frame body (1 topic, N partitions, one batch
  each) into each side's own typed objects; records stay raw.
- produce-patchable: the same, ending in amq's types with records the broker can
  patch in place (kio: its entities converted, records copied into bytearrays).
- fetch-encode: a FetchResponse (16 partitions x 64 KiB records) from typed objects
  to bytes ready for the socket, at v11 (last non-flexible) and v12 (flexible).
- metadata-encode: a small MetadataResponse (3 brokers, 4 topics x 3 partitions).
- api-versions-encode: the ApiVersions reply, the first thing every client asks.

kio writes into a BytesIO; amq's encoder returns a list of buffers and leaves record
payloads of 4 KiB or more uncopied, which is the point of it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.protocol import codegen
from engine.protocol import messages as m
from engine.protocol.codec import decode_request, encode_request, encode_response
from engine.protocol.headers import RequestHeader
from engine.protocol.records import Record, build_batch


def _calibrate(fn: Callable[[], Any], seconds: float) -> int:
    n = 1
    while True:
        t = time.thread_time()
        for _ in range(n):
            fn()
        dt = time.thread_time() - t
        if dt > 0.05:
            return max(1, int(n * seconds / dt))
        n *= 2


def bench_pair(ours: Callable[[], Any], theirs: Callable[[], Any] | None, seconds: float,
               rounds: int = 5) -> tuple[float, float | None]:
    """Best ops per CPU-second of each side, over ``rounds`` alternating runs.

    CPU time of this thread, not wall time: on a shared machine a descheduled
    benchmark would otherwise look slow. Alternating rounds spread any remaining
    interference over both sides.
    """
    per = seconds / rounds
    n_ours = _calibrate(ours, per)
    n_theirs = _calibrate(theirs, per) if theirs else 0
    best_ours = 0.0
    best_theirs = 0.0
    for _ in range(rounds):
        t = time.thread_time()
        for _ in range(n_ours):
            ours()
        best_ours = max(best_ours, n_ours / (time.thread_time() - t))
        if theirs:
            t = time.thread_time()
            for _ in range(n_theirs):
                theirs()
            best_theirs = max(best_theirs, n_theirs / (time.thread_time() - t))
    return best_ours, (best_theirs if theirs else None)


# -- fixtures ----------------------------------------------------------------------------


def produce_frame(partitions: int, batch_bytes: int) -> tuple[memoryview, int]:
    value = os.urandom(max(1, batch_bytes // 16 - 40))
    batch = build_batch([Record(key=b"k%d" % i, value=value) for i in range(16)], now_ms=1_700_000_000_000)
    req = m.ProduceRequest(
        acks=-1,
        timeout_ms=30000,
        topic_data=[
            m.ProduceRequest.TopicProduceData(
                "bench-topic", [m.ProduceRequest.PartitionProduceData(p, batch) for p in range(partitions)]
            )
        ],
    )
    frame = encode_request(RequestHeader(0, 9, 7, "rdkafka"), req)
    body = memoryview(frame)[4:]
    # Body offset after the v2 header: 8 fixed + 2 + len("rdkafka") + 1 (tags).
    return body, 8 + 2 + 7 + 1


def fetch_parts(partitions: int, record_bytes: int) -> list[tuple[int, int, bytes]]:
    blob = os.urandom(record_bytes)
    return [(p, 1000 + p, blob) for p in range(partitions)]


def ours_fetch(parts: list[tuple[int, int, bytes]]) -> m.FetchResponse:
    PD = m.FetchResponse.PartitionData
    return m.FetchResponse(
        responses=[
            m.FetchResponse.FetchableTopicResponse(
                "bench-topic",
                [PD(p, 0, hw, hw, 0, records=rec) for p, hw, rec in parts],
            )
        ]
    )


def metadata_ours() -> m.MetadataResponse:
    B = m.MetadataResponse.MetadataResponseBroker
    T = m.MetadataResponse.MetadataResponseTopic
    P = m.MetadataResponse.MetadataResponsePartition
    return m.MetadataResponse(
        brokers=[B(i, f"broker-{i}.local", 9092, "az1") for i in range(3)],
        cluster_id="amq-cluster",
        controller_id=0,
        topics=[
            T(0, f"topic-{t}", partitions=[P(0, p, p % 3, 5, [p % 3], [p % 3], []) for p in range(3)])
            for t in range(4)
        ],
    )


# -- kio ---------------------------------------------------------------------------------


def kio_cases(
    produce_body: memoryview,
    pos: int,
    produce_small: memoryview,
    pos_small: int,
    parts: list[tuple[int, int, bytes]],
    patchable: dict[str, tuple[memoryview, int]],
) -> dict[str, Callable[[], Any]]:
    from kio.index import load_request_schema, load_response_schema
    from kio.schema.errors import ErrorCode
    from kio.serial import entity_reader, entity_writer
    from kio.static.primitive import i16, i32, i64

    cases: dict[str, Callable[[], Any]] = {}
    prod = load_request_schema(0, 9)
    read_prod = entity_reader(prod)
    cases["produce-decode"] = lambda: read_prod(produce_body, pos)
    cases["produce-decode-small"] = lambda: read_prod(produce_small, pos_small)

    P, T, D = m.ProduceRequest, m.ProduceRequest.TopicProduceData, m.ProduceRequest.PartitionProduceData

    def to_patchable(body: memoryview, at: int) -> m.ProduceRequest:
        # kio's entities converted to the broker's types, records copied into
        # bytearrays so that offsets can be patched in place (kio returns bytes).
        e, _ = read_prod(body, at)
        return P(
            e.transactional_id, int(e.acks), int(e.timeout.total_seconds() * 1000),
            [T(t.name, [D(p.index, bytearray(p.records)) for p in t.partition_data]) for t in e.topic_data],
        )

    for name, (body, at) in patchable.items():
        cases[name] = lambda body=body, at=at: to_patchable(body, at)

    for v in (11, 12):
        mod = sys.modules[load_response_schema(1, v).__module__]
        write = entity_writer(mod.FetchResponse)

        def fetch(mod: Any = mod, write: Any = write) -> None:
            resp = mod.FetchResponse(
                throttle_time=__import__("datetime").timedelta(0),
                error_code=ErrorCode.none,
                session_id=i32(0),
                responses=(
                    mod.FetchableTopicResponse(
                        topic="bench-topic",
                        partitions=tuple(
                            mod.PartitionData(
                                partition_index=i32(p),
                                error_code=ErrorCode.none,
                                high_watermark=i64(hw),
                                last_stable_offset=i64(hw),
                                log_start_offset=i64(0),
                                aborted_transactions=(),
                                preferred_read_replica=i32(-1),
                                records=rec,
                            )
                            for p, hw, rec in parts
                        ),
                    ),
                ),
            )
            buf = io.BytesIO()
            write(buf, resp)
            buf.getvalue()

        cases[f"fetch-encode-v{v}"] = fetch

    md = sys.modules[load_response_schema(3, 11).__module__]
    write_md = entity_writer(md.MetadataResponse)

    def metadata() -> None:
        resp = md.MetadataResponse(
            throttle_time=__import__("datetime").timedelta(0),
            brokers=tuple(
                md.MetadataResponseBroker(node_id=i32(i), host=f"broker-{i}.local", port=i32(9092), rack="az1")
                for i in range(3)
            ),
            cluster_id="amq-cluster",
            controller_id=i32(0),
            topics=tuple(
                md.MetadataResponseTopic(
                    error_code=ErrorCode.none,
                    name=f"topic-{t}",
                    topic_id=__import__("uuid").UUID(int=0),
                    is_internal=False,
                    partitions=tuple(
                        md.MetadataResponsePartition(
                            error_code=ErrorCode.none,
                            partition_index=i32(p),
                            leader_id=i32(p % 3),
                            leader_epoch=i32(5),
                            replica_nodes=(i32(p % 3),),
                            isr_nodes=(i32(p % 3),),
                            offline_replicas=(),
                        )
                        for p in range(3)
                    ),
                    topic_authorized_operations=i32(-2147483648),
                )
                for t in range(4)
            ),
        )
        buf = io.BytesIO()
        write_md(buf, resp)
        buf.getvalue()

    cases["metadata-encode-v11"] = metadata

    av = sys.modules[load_response_schema(18, 3).__module__]
    write_av = entity_writer(av.ApiVersionsResponse)
    from engine.protocol.apis import SUPPORTED_APIS

    def api_versions() -> None:
        resp = av.ApiVersionsResponse(
            error_code=ErrorCode.none,
            api_keys=tuple(
                av.ApiVersion(api_key=i16(s.key), min_version=i16(s.min_version), max_version=i16(s.max_version))
                for s in SUPPORTED_APIS.values()
            ),
            throttle_time=__import__("datetime").timedelta(0),
        )
        buf = io.BytesIO()
        write_av(buf, resp)
        buf.getvalue()

    cases["api-versions-encode-v3"] = api_versions
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU time per case and side")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--record-kib", type=int, default=64)
    args = ap.parse_args()

    produce_body, pos = produce_frame(partitions=args.partitions, batch_bytes=16 * 1024)
    produce_small, pos_small = produce_frame(partitions=1, batch_bytes=1024)
    parts = fetch_parts(args.partitions, args.record_kib * 1024)
    fetch_header = {v: RequestHeader(1, v, 9, "rdkafka", 2 if v >= 12 else 1) for v in (11, 12)}
    md_header = RequestHeader(3, 11, 5, "rdkafka", 2)
    av_header = RequestHeader(18, 3, 1, "rdkafka", 2)
    from engine.protocol.codec import api_versions_response

    prod_decode = codegen.decoder("ProduceRequest", 9)
    # End to end from a read-only socket frame to typed objects whose records can be
    # patched in place: amq copies the frame once (what FrameDecoder(writable=True)
    # does) and decodes views into it; kio copies each records field, then again.
    patchable = {
        "produce-patchable-16x16K": (produce_body, pos),
        "produce-patchable-1x1K": (produce_small, pos_small),
        "produce-patchable-4x64K": produce_frame(partitions=4, batch_bytes=64 * 1024),
        "produce-patchable-2x1M": produce_frame(partitions=2, batch_bytes=1024 * 1024),
    }

    ours: dict[str, Callable[[], Any]] = {
        "produce-decode": lambda: prod_decode(produce_body, pos),
        "produce-decode-small": lambda: prod_decode(produce_small, pos_small),
        "produce-decode+header": lambda: decode_request(produce_body),
        **{
            name: (lambda body=body, at=at: prod_decode(memoryview(bytearray(body)), at))
            for name, (body, at) in patchable.items()
        },
        "fetch-encode-v11": lambda: encode_response(fetch_header[11], ours_fetch(parts)),
        "fetch-encode-v12": lambda: encode_response(fetch_header[12], ours_fetch(parts)),
        "metadata-encode-v11": lambda: encode_response(md_header, metadata_ours()),
        "api-versions-encode-v3": lambda: encode_response(av_header, api_versions_response()),
    }

    try:
        theirs = kio_cases(produce_body, pos, produce_small, pos_small, parts, patchable)
    except ImportError:
        theirs = {}

    print(f"# codec_bench  {time.strftime('%Y-%m-%d')}  python {platform.python_version()}  "
          f"{platform.machine()}  cpus={os.cpu_count()}")
    print(f"# produce: {args.partitions} partitions x 16 KiB batch (small: 1 x 1 KiB); "
          f"fetch: {args.partitions} partitions x {args.record_kib} KiB")
    print("# ops per CPU-second of the benchmark thread, best of 5 alternating rounds")
    print(f"{'case':26} {'amq ops/s':>12} {'kio ops/s':>12} {'amq/kio':>8}")
    for name, fn in ours.items():
        a, k = bench_pair(fn, theirs.get(name), args.seconds)
        ratio = f"{a / k:7.2f}x" if k else "      -"
        ks = f"{k:12,.0f}" if k else f"{'-':>12}"
        print(f"{name:26} {a:12,.0f} {ks} {ratio}", flush=True)


if __name__ == "__main__":
    main()
