#!/usr/bin/env python3
"""The zone router, on vs off, in one run: cross-zone bytes, WAL-tier bytes, publish and end-to-end tails.

Two local clusters, one after the other (3 zones x 1 broker, `nfs` WAL by default; SeaweedFS, the
controller and the brokers are real processes, the clients librdkafka). In each, a 3-partition topic
(one partition led in each zone) and, for every zone, a producer and a consumer that name their zone
in client.id (`automq_az=`): for every partition a producer writes `--rate` records/s of 1 KiB to it
(idempotent, acks=all, linger.ms=1), and a consumer reads every partition. Per record we know the zone
it was produced in, the zone of its partition's leader and the zone that read it, so latencies are
split into "in the leader's zone" and "in another zone" (through a zone proxy when the router is on,
straight to the leader when it is off).

Reported per cluster: cross-zone data bytes as % of data bytes (the brokers' ledger), WAL-tier bytes
written (WAL + relay objects, frame headers and REF records included) per byte of record batches produced, publish p50/p99 (send -> acknowledgement) and
end-to-end p50/p99 (send -> a consumer has it), each for clients in the leader's zone and in the
other zones.

    python3 benchmarks/zones.py                      # results into BENCHMARKS.md
    python3 benchmarks/zones.py --seconds 10 --no-write
    python3 benchmarks/zones.py --rounds 3          # off, on, off, on, off, on: percentiles pooled
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import ClusterOptions, parse_zones, start_cluster, stop_cluster
from benchmarks.report import machine, write_section

BEGIN, END = "<!-- zones:begin -->", "<!-- zones:end -->"
ZONES = ["az1", "az2", "az3"]
RECORD = 1024
PHASES = ("produce_total", "produce_durable", "relay_write", "relay_leader", "relay_read", "relay_durable",
          "relay_sync", "wal_relay_sync", "wal_sync", "loop_lag")  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@dataclass
class Run:
    publish: dict[str, list[float]] = field(default_factory=lambda: {"same": [], "other": []})
    e2e: dict[str, list[float]] = field(default_factory=lambda: {"same": [], "other": []})
    errors: list[str] = field(default_factory=list)


def produce(bootstrap: str, topic: str, zone: str, partition: int, leader_zone: dict[int, str], rate: int,
            seconds: float, run: Run, lock: threading.Lock) -> None:  # fmt: skip
    p = Producer({"bootstrap.servers": bootstrap, "client.id": f"bench&automq_az={zone}", "enable.idempotence": True,
                  "acks": "all", "linger.ms": 1, "compression.type": "none"})  # fmt: skip
    pad = b"." * (RECORD - 40)

    def done(err: Any, msg: Any) -> None:
        now = time.time()
        if err is not None:
            run.errors.append(str(err))
            return
        sent = float(msg.value()[:20])
        where = "same" if leader_zone[msg.partition()] == zone else "other"
        with lock:
            run.publish[where].append(now - sent)

    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        while n < due:
            p.produce(topic, value=b"%20.6f%-20s" % (time.time(), zone.encode()) + pad, partition=partition,
                      on_delivery=done)  # fmt: skip
            n += 1
        p.poll(0.001)
    p.flush(60)


def consume(bootstrap: str, topic: str, zone: str, leader_zone: dict[int, str], stop: threading.Event, run: Run,
            lock: threading.Lock) -> None:  # fmt: skip
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{zone}-{time.time()}",
                  "client.id": f"bench&automq_az={zone}", "client.rack": zone, "enable.auto.commit": False,
                  "fetch.wait.max.ms": 100, "auto.offset.reset": "latest"})  # fmt: skip
    c.assign([TopicPartition(topic, p, -1) for p in leader_zone])
    while not stop.is_set():
        # poll, not consume(n, t): consume waits for n messages or t, which would be counted as latency.
        m = c.poll(0.1)
        if m is None or m.error() is not None:
            continue
        now = time.time()
        where = "same" if leader_zone[m.partition()] == zone else "other"
        with lock:
            run.e2e[where].append(now - float(m.value()[:20]))
    c.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def metrics(urls: list[str]) -> list[dict[str, Any]]:
    return [json.loads(urllib.request.urlopen(u, timeout=5).read()) for u in urls]


def trial(router: bool, wal: str, rate: int, seconds: float, latency_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="amq-zones-") as tmp:
        opts = ClusterOptions(dir=str(Path(tmp) / "data"), port=0, wal=wal, zone_router=router, auto_balance=False,
                              zone_latency_ms=latency_ms)  # fmt: skip
        opts.zones = parse_zones(",".join(ZONES))
        state = start_cluster(opts, home=Path(tmp) / "home")
        try:
            bootstrap = state["bootstrap"]
            zone_of = {b["id"]: b["zone"] for b in state["brokers"]}
            topic = f"zones-{int(time.time())}"
            # The handle must outlive the call's result.
            admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "bench&automq_route=leader"})
            admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
            parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
            leader_zone = {p: zone_of[parts[p].leader] for p in parts}
            pids = [int(b["pid"]) for b in state["brokers"]]
            cpu_before = [cpu_seconds(p) for p in pids]
            before = metrics(state["metrics"])
            run, lock, stop = Run(), threading.Lock(), threading.Event()
            # Daemons: Ctrl-C or SIGTERM reaches the main thread's `finally`, which stops the cluster.
            consumers = [threading.Thread(target=consume, args=(bootstrap, topic, z, leader_zone, stop, run, lock),
                                          daemon=True) for z in ZONES]  # fmt: skip
            for t in consumers:
                t.start()
            time.sleep(3)  # consumers assigned and polling before the first record
            # One producer per (zone, partition): a request through a proxy never waits for a direct one.
            producers = [threading.Thread(target=produce, args=(bootstrap, topic, z, part, leader_zone, rate, seconds,
                                                                run, lock), daemon=True)
                         for z in ZONES for part in leader_zone]  # fmt: skip
            for t in producers:
                t.start()
            for t in producers:
                t.join()
            time.sleep(2)
            stop.set()
            for t in consumers:
                t.join()
            after = metrics(state["metrics"])
            cpu = sum(cpu_seconds(p) for p in pids) - sum(cpu_before)
            rows: dict[tuple[str, str, str], int] = {}
            for m_before, m_after in zip(before, after, strict=True):
                old = {(r["src"], r["dst"], r["kind"]): r["bytes"] for r in m_before.get("zone_traffic", [])}
                for r in m_after.get("zone_traffic", []):
                    key = (r["src"], r["dst"], r["kind"])
                    rows[key] = rows.get(key, 0) + r["bytes"] - old.get(key, 0)
            data = sum(n for (s, d, k), n in rows.items() if k == "client")
            cross = sum(n for (s, d, k), n in rows.items() if k == "client" and s != d)
            pointers = sum(n for (s, d, k), n in rows.items() if k == "broker" and s != d)

            def delta(name: str) -> int:
                return sum(int(a.get(name, 0)) - int(b.get(name, 0)) for a, b in zip(after, before, strict=True))

            wal_tier = delta("wal_bytes_written") + delta("relay_bytes_written")
            router_bytes = {m: delta(f"router_{m}_bytes") for m in ("append_refs", "tail", "offsets")}
            return {
                "router": router, "records": sum(len(v) for v in run.publish.values()), "errors": run.errors[:3],
                "cross_bytes": cross, "wal_tier_bytes": wal_tier, "produce_bytes": delta("produce_bytes"),
                "samples": {"publish": run.publish, "e2e": run.e2e},
                "data_bytes": data, "cross_zone_pct": 100 * cross / data if data else 0.0,
                "pointer_bytes_cross_zone": pointers, "wal_tier_per_byte": wal_tier / max(delta("produce_bytes"), 1),
                "router_bytes": router_bytes,
                "broker_cpu_s": round(cpu, 2),
                "requests": {k: delta(k) for k in ("requests_total", "router_requests", "produce_requests")},
                # Broker-side phases (whole run, each broker): where a relayed produce's time goes.
                "phases": {k: [[round(m["latency"][k][q] or 0, 2) for q in ("p50_ms", "p99_ms")] for m in after]
                           for k in PHASES if k in after[0].get("latency", {})},
                **{f"publish_{w}_{q}": 1000 * pct(run.publish[w], v) for w in ("same", "other")
                   for q, v in (("p50", 0.5), ("p99", 0.99))},
                **{f"e2e_{w}_{q}": 1000 * pct(run.e2e[w], v) for w in ("same", "other")
                   for q, v in (("p50", 0.5), ("p99", 0.99))},
            }  # fmt: skip
        finally:
            stop_cluster(state)


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One setting's rounds as one run: counts summed, percentiles over every sample."""
    if len(rounds) == 1:
        return rounds[0]
    total = {k: sum(r[k] for r in rounds) for k in ("records", "data_bytes", "cross_bytes", "wal_tier_bytes",
                                                   "produce_bytes", "pointer_bytes_cross_zone")}  # fmt: skip
    out: dict[str, Any] = {**total, "router": rounds[0]["router"]}
    out["cross_zone_pct"] = 100 * total["cross_bytes"] / total["data_bytes"] if total["data_bytes"] else 0.0
    out["wal_tier_per_byte"] = total["wal_tier_bytes"] / max(total["produce_bytes"], 1)
    for kind in ("publish", "e2e"):
        for w in ("same", "other"):
            xs = [x for r in rounds for x in r["samples"][kind][w]]
            for q, v in (("p50", 0.5), ("p99", 0.99)):
                out[f"{kind}_{w}_{q}"] = 1000 * pct(xs, v)
    return out


def _interrupted(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # through trial()'s `finally`: the cluster is stopped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wal", default="nfs", choices=["nfs", "s3"])
    ap.add_argument("--rate", type=int, default=100, help="records/s per producer per partition (9 streams)")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--zone-latency-ms", type=int, default=0, help="simulated latency between zones, each way")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="clusters off, on, off, on, ...: latencies pooled per setting (a noisy minute hits both)",
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for router in (False, True):
            r = trial(router, args.wal, args.rate, args.seconds, args.zone_latency_ms)
            runs[router].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "samples"}))
    off, on = (pooled(runs[router]) for router in (False, True))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
        f"Command: `python3 benchmarks/zones.py --wal {args.wal} --rate {args.rate} --seconds {args.seconds:g} "
        f"--zone-latency-ms {args.zone_latency_ms} --rounds {args.rounds}` "
        f"(3 zones x 1 broker; per zone a producer and a consumer naming their zone; 3 partitions, one led per zone; "
        f"1 KiB records, idempotent acks=all, linger.ms=1). one producer per zone and partition; 'same': client in the leader's zone; 'other': in another "
        f"zone (through a zone proxy when the router is on). "
        f"{args.rounds} round(s) of a router-off and a router-on cluster, one after the other; latencies pooled.",
        "",
        "| | router off | router on |",
        "|---|---:|---:|",
        f"| records acknowledged | {off['records']:,} | {on['records']:,} |",
        f"| cross-zone data bytes, % of data bytes | {off['cross_zone_pct']:.1f} | {on['cross_zone_pct']:.2f} |",
        f"| pointer bytes across zones (router messages) | {off['pointer_bytes_cross_zone']:,} | "
        f"{on['pointer_bytes_cross_zone']:,} |",
        f"| WAL-tier bytes written (WAL + relay objects) per Kafka byte produced | {off['wal_tier_per_byte']:.3f} | "
        f"{on['wal_tier_per_byte']:.3f} |",
    ]
    for kind, label in (("publish", "publish"), ("e2e", "end-to-end")):
        for w in ("same", "other"):
            lines.append(f"| {label} p50 / p99 ms, {w} zone | {off[f'{kind}_{w}_p50']:.1f} / "
                         f"{off[f'{kind}_{w}_p99']:.1f} | {on[f'{kind}_{w}_p50']:.1f} / {on[f'{kind}_{w}_p99']:.1f} |")  # fmt: skip
    per_round = ", ".join(f"{a['publish_other_p99']:.1f} / {b['publish_other_p99']:.1f} / {b['publish_same_p99']:.1f}"
                          for a, b in zip(runs[False], runs[True], strict=True))  # fmt: skip
    lines += [
        "",
        f"Publish p99 through a proxy against direct to the leader (goal <= 1.5x): "
        f"{on['publish_other_p99'] / max(off['publish_other_p99'], 1e-9):.2f}x the router-off cluster's clients, "
        f"{on['publish_other_p99'] / max(on['publish_same_p99'], 1e-9):.2f}x the same cluster's clients in the "
        f"leader's zone. e2e p99 other minus same zone (router on) {on['e2e_other_p99'] - on['e2e_same_p99']:+.1f} ms "
        f"(goal <= +20). Per round, publish p99 ms (off direct / on proxied / on direct): {per_round}.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", BEGIN, END,
                      ["## Zone router: on vs off (benchmarks/zones.py)", "", *lines])  # fmt: skip


if __name__ == "__main__":
    main()
