"""S3 down under an idempotent acks=all load: do producers stall, resume, lose nothing; how long does the WAL hold out?

Starts a cluster of its own (3 brokers in 3 zones, the S3 fault proxy), three producers as
`amq chaos trials` runs them, then S3 refuses every connection for --down seconds. Reports:
records acknowledged during the outage, how long acknowledgements went on after it began (the
WAL holding out: the s3 WAL cannot make anything durable, the nfs/file WAL until its ring is
full), the longest stall, how long after the outage produce resumed, and the check of every
acknowledged record.

    python3 benchmarks/s3_outage.py --wal s3 --down 30
    python3 benchmarks/s3_outage.py --wal nfs --down 30 --pad 4096 --wal-mib 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automq_cli.chaos.faults import set_s3_faults
from automq_cli.cluster.launch import ClusterOptions, start_cluster, stop_cluster
from automq_cli.cluster.state import remove_state
from engine.devtools.workload import PARTITIONS, Load, read_records, unique, verify, wait_until

QUIET = {"log_level": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wal", choices=["s3", "nfs", "file"], default="s3")
    ap.add_argument("--down", type=float, default=30.0, help="seconds of outage")
    ap.add_argument("--rate", type=float, default=300.0, help="records/s per producer (3 producers)")
    ap.add_argument("--pad", type=int, default=0, help="bytes of padding per record")
    ap.add_argument("--wal-mib", type=int, default=64, help="WAL ring capacity (nfs, file)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    if not args.down > 0 or not args.rate > 0 or args.pad < 0 or args.wal_mib < 1:
        ap.error("--down, --rate and --wal-mib must be positive, --pad not negative")

    tmp = Path(tempfile.mkdtemp(prefix="amq-s3-outage-"))
    opts = ClusterOptions(dir=str(tmp / "data"), port=0, wal=args.wal, brokers=3, zones=["az1", "az2", "az3"],
                          s3_faults=True, wal_capacity=args.wal_mib << 20, upload_interval_s=0.5)  # fmt: skip
    print(f"starting 3 brokers ({args.wal} WAL) with the S3 fault proxy in {tmp}", flush=True)
    state = start_cluster(opts, home=tmp / "home")
    ok = False
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        bootstrap = str(state["bootstrap"])
        topic = unique("outage")
        admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})  # kept: its futures die with it
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        ids = ["outage-p0&automq_az=az1", "outage-p1&automq_az=az3", "outage-p2"]
        loads = [Load(bootstrap, topic, client_id=c, key=b"p%d" % i, rate=args.rate, pad=args.pad, config=QUIET).start()
                 for i, c in enumerate(ids)]  # fmt: skip
        total = lambda: sum(x.total for x in loads)  # noqa: E731
        wait_until(lambda: total() > 3000, 60, "produce to start")
        time.sleep(5)
        before = total()
        down_at = time.monotonic()
        print(set_s3_faults(state, clear=True, down_s=args.down), flush=True)
        while time.monotonic() < down_at + args.down:
            time.sleep(1)
            print(f"  +{time.monotonic() - down_at:4.0f} s  acknowledged during the outage: {total() - before:,}",
                  flush=True)  # fmt: skip
        up_at = time.monotonic()
        print(set_s3_faults(state, clear=True), flush=True)
        during = total() - before
        wait_until(lambda: all(max(x.last_ack(p) for x in loads) > up_at for p in range(PARTITIONS)), 180,
                   "every partition to acknowledge after the outage")  # fmt: skip
        time.sleep(5)
        acks = sorted(t for x in loads for times in x.ack_times.values() for t in times)
        in_outage = [t for t in acks if down_at <= t <= up_at]
        held_out = (in_outage[-1] - down_at) if in_outage else 0.0
        after = [t for t in acks if t > up_at]
        resumed = min(
            min(t for x in loads for t in x.ack_times.get(p, []) if t > up_at) for p in range(PARTITIONS)
        )  # fmt: skip
        all_back = max(
            min(t for x in loads for t in x.ack_times.get(p, []) if t > up_at) for p in range(PARTITIONS)
        )  # fmt: skip
        for x in loads:
            x.finish()
        got = read_records(bootstrap, topic, timeout=180, config=QUIET)
        verdict = verify(loads, got)
        errors = [e for x in loads for e in x.errors]
        mib_s = 3 * args.rate * (args.pad + 8) / (1 << 20)
        report = {
            "wal": args.wal, "down_s": args.down, "rate_per_producer": args.rate, "pad": args.pad,
            "offered_mib_s": round(mib_s, 2), "wal_mib": args.wal_mib,
            "acked_before": before, "acked_during_outage": during,
            "acks_went_on_for_s": round(held_out, 1),
            "first_ack_after_outage_s": round(resumed - up_at, 2),
            "every_partition_back_after_s": round(all_back - up_at, 2),
            "acked_after": len(after), "acked_total": verdict.acked, "read": verdict.read,
            "violations": verdict.counts(), "producer_errors": len(errors), "producer_error_examples": errors[:5],
        }  # fmt: skip
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        ok = verdict.ok
        return 0 if ok else 1
    finally:
        stop_cluster(state, timeout=20)
        remove_state(tmp / "home")
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (logs)")


if __name__ == "__main__":
    sys.exit(main())
