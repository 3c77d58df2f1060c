#!/usr/bin/env python3
"""Send fuzzed Kafka frames to a live broker; print crashes, frames/s and the broker's RSS.

Frames come from engine.devtools.fuzz.FrameFuzzer: valid requests of every API amq decodes
(random fields, record batches plain, compressed, damaged, compression bombs) mutated by bit
flips, truncation, changed length fields and counts, over-long varints, repeated regions, plus
random bytes. Without --bootstrap it starts a one-broker cluster of its own (temp dir, free
ports, the `amq cluster up` code) and stops it by pid afterwards. Then a librdkafka producer and
consumer must still work. Exit status 1 on any crash, handler error or client failure.

    python3 benchmarks/fuzz.py --frames 100000
    python3 benchmarks/fuzz.py --frames 1000000 --seed 7 --json fuzz.json
    python3 benchmarks/fuzz.py --frames 20000 --apis all          # admin APIs too (creates topics)
    python3 benchmarks/fuzz.py --bootstrap 127.0.0.1:9092 --pid 1234 --frames 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.devtools.fuzz import STATE_CHANGING, FrameFuzzer, LiveReport, clients_work, run_live
from engine.protocol.apis import SUPPORTED_APIS

TOPICS = ["fuzz", "fuzz-compact"]


def create_topics(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic("fuzz", 3, 1), NewTopic("fuzz-compact", 3, 1, config={"cleanup.policy": "compact"})]
    for f in admin.create_topics(new).values():
        try:
            f.result(30)
        except Exception as e:  # a topic left by an earlier run is fine
            if "already exists" not in str(e).lower():
                raise


def print_report(rep: LiveReport, clients: str | None) -> None:
    mib = 1 << 20
    print(f"frames sent        {rep.frames:,} in {rep.seconds:.1f} s ({rep.frames_per_s:,.0f} frames/s)")
    print(
        f"answered / closed  {rep.answered:,} / {rep.closed:,} (no answer within the wait: {rep.unanswered:,}; "
        f"size prefix beyond the frame, dropped: {rep.incomplete:,})"
    )
    if rep.unanswered_kinds:
        top = sorted(rep.unanswered_kinds.items(), key=lambda kv: -kv[1])[:6]
        print("  unanswered by api: " + ", ".join(f"{k} {v}" for k, v in top))
    print(f"crashes            {rep.crashes} (health probes: {rep.health_probes})")
    print(f"handler errors     {rep.handler_errors}")
    if rep.rss_before is not None:
        print(f"broker RSS         before {rep.rss_before / mib:.0f} MiB, after {(rep.rss_after or 0) / mib:.0f} MiB, "
              f"max {(rep.rss_max or 0) / mib:.0f} MiB")  # fmt: skip
    print(f"clients after      {'ok' if clients is None else 'FAILED: ' + clients}")
    for f in rep.failures[:10]:
        print(f"  {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", help="host:port of a running broker (default: start a private cluster)")
    ap.add_argument("--pid", type=int, help="the broker's pid, for liveness and RSS (with --bootstrap)")
    ap.add_argument("--metrics", help="the broker's metrics URL, for handler errors (with --bootstrap)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--apis", default="default", help="'default' (no state-changing admin APIs), 'all', or keys")
    ap.add_argument("--no-bombs", action="store_true", help="leave compression bombs out")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument(
        "--skip",
        type=int,
        default=0,
        help="generate and drop this many frames first (to reach a long run's later frames sooner)",
    )
    args = ap.parse_args()
    if args.frames < 1:
        ap.error("--frames must be at least 1")
    if args.apis == "all":
        apis = sorted(SUPPORTED_APIS)
    elif args.apis == "default":
        apis = sorted(k for k in SUPPORTED_APIS if k not in STATE_CHANGING)
    else:
        try:
            apis = sorted({int(x) for x in args.apis.split(",")})
        except ValueError:
            ap.error("--apis takes 'default', 'all' or api keys (0,1,3)")
        unknown = [k for k in apis if k not in SUPPORTED_APIS]
        if unknown:
            ap.error(f"--apis: amq does not decode api keys {unknown}")

    cluster = None
    tmp = None
    if args.bootstrap:
        host, _, port = args.bootstrap.rpartition(":")
        pid, metrics = args.pid, args.metrics
    else:
        from tests.integration.cluster_fixture import start_local_cluster

        tmp = tempfile.TemporaryDirectory(prefix="amq-fuzz-")
        print("starting a one-broker cluster ...", flush=True)
        cluster = start_local_cluster(Path(tmp.name))
        host, port = "127.0.0.1", str(cluster.port)
        pid, metrics = cluster.broker_pid(0), cluster.metrics_url
    bootstrap = f"{host}:{port}"
    try:
        create_topics(bootstrap)
        fuzzer = FrameFuzzer(args.seed, topics=TOPICS, apis=apis, bombs=not args.no_bombs)
        for _ in range(args.skip):
            fuzzer.frame()

        def progress(rep: LiveReport) -> None:
            if rep.frames % 50_000 == 0:
                rss = f", RSS {rep.rss_max / (1 << 20):.0f} MiB max" if rep.rss_max else ""
                print(f"  {rep.frames:,} frames, {rep.frames_per_s:,.0f}/s, crashes {rep.crashes}{rss}", flush=True)

        rep = asyncio.run(run_live(host, int(port), args.frames, seed=args.seed, pid=pid, metrics_url=metrics,
                                   connections=args.connections, fuzzer=fuzzer, progress=progress))  # fmt: skip
        clients = clients_work(bootstrap)
        print_report(rep, clients)
        if rep.handler_errors and cluster is not None:
            # The cluster's directory goes away below: show what the handlers raised first.
            text = cluster.broker_log.read_text(errors="replace").splitlines()
            for i, line in enumerate(text):
                if "failed; closing the connection" in line:
                    print("\n".join(text[i : i + 30]))
        if args.json:
            out = {**rep.as_dict(), "seed": args.seed, "apis": apis, "clients_after": clients or "ok"}
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return 1 if rep.crashes or rep.handler_errors or clients else 0
    finally:
        if cluster is not None:
            cluster.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
