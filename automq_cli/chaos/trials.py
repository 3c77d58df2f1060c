"""`amq chaos trials`: randomized faults under an idempotent acks=all load, then every acknowledged
record checked (docs/chaos.md).

The run starts a cluster of its own (a temp dir, free ports, the S3 fault proxy), puts real
clients on it (librdkafka producers, some naming their zone in client.id so the zone router
relays them, and a consuming group), then per trial: injects a fault drawn from the seed, holds
it, heals it, and waits until every partition acknowledges again (the recovery time). At the
end it reads the topic back and checks each acknowledged record: lost, duplicated, reordered
within its partition, or no longer at the offset it was acknowledged at.

The seed fixes the sequence of faults (kind, target, duration, parameters); timing on a busy
machine does not repeat exactly, so a violation may need a few runs of the same seed.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
import shlex
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automq_cli.chaos import faults
from automq_cli.chaos.faults import FaultError
from automq_cli.cluster.launch import (
    ClusterError,
    ClusterOptions,
    parse_zones,
    start_brokers,
    start_cluster,
    stop_cluster,
)
from automq_cli.cluster.processes import pid_alive
from automq_cli.cluster.state import remove_state, write_state
from engine.devtools.workload import (
    PARTITIONS,
    GroupReader,
    Load,
    ReadBackError,
    Verdict,
    read_records,
    unique,
    verify,
    wait_until,
)

FAULT_KINDS = ("kill", "pause", "s3", "zone", "tear")
#: What a trial may wait for every partition to acknowledge again after a fault is healed.
RECOVERY_TIMEOUT_S = 120.0
#: librdkafka logs every refused connection at level 3; under injected faults those are expected.
QUIET = {"log_level": 2}
#: Broker counters that show the zone router relayed writes (zone-aware producers, leader elsewhere).
ROUTER_COUNTERS = ("relayed_batches", "relayed_appends")

Say = Callable[[str], None]


@dataclass
class TrialsOptions:
    count: int
    seed: int
    faults: list[str]
    wal: str = "nfs"
    brokers: int = 3
    #: Records per second per producer (three producers).
    rate: float = 300.0
    #: Seconds of normal load between a recovery and the next fault.
    settle_s: float = 2.0
    #: Where the cluster lives; None: a temp dir, removed afterwards unless a violation was found.
    dir: str | None = None
    keep: bool = False

    @property
    def zones(self) -> list[str]:
        return parse_zones(min(3, self.brokers))


def parse_fault_kinds(text: str, wal: str) -> list[str]:
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    if not kinds:
        raise FaultError("--faults is empty; give some of: " + ",".join(FAULT_KINDS))
    for k in kinds:
        if k not in FAULT_KINDS:
            raise FaultError(f"unknown fault {k!r} in --faults; use some of: {','.join(FAULT_KINDS)}")
    if "tear" in kinds and wal == "s3":
        raise FaultError("--faults tear needs a WAL ring (--wal nfs or file); the s3 WAL has none to tear")
    return list(dict.fromkeys(kinds))


def default_faults(wal: str) -> str:
    return ",".join(k for k in FAULT_KINDS if not (k == "tear" and wal == "s3"))


def check_options(opts: TrialsOptions) -> None:
    if opts.count < 1:
        raise FaultError(f"--count must be at least 1, got {opts.count}")
    if opts.wal not in ("file", "nfs", "s3"):
        raise FaultError(f"--wal must be nfs, s3 or file, not {opts.wal!r}")
    if not 1 <= opts.brokers <= 9:
        raise FaultError(f"--brokers must be between 1 and 9, got {opts.brokers}")
    if not opts.rate > 0:
        raise FaultError(f"--rate must be more than 0 records/s, got {opts.rate:g}")
    if opts.seed < 0:
        raise FaultError(f"--seed must be 0 or more, got {opts.seed}")
    if opts.dir is not None and Path(opts.dir).exists() and any(Path(opts.dir).iterdir()):
        raise FaultError(f"--dir {opts.dir} is not empty; the trials start a cluster of their own")


# -- the plan -------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One trial's fault, decided by the seed before anything runs."""

    kind: str
    hold_s: float
    broker: int | None = None
    #: pause: broker-N or controller; zone: the zone; s3: errors | latency | down | down-503.
    target: str = ""
    seed: int = 0

    def describe(self) -> str:
        hold = f"{self.hold_s:.1f} s"
        if self.kind == "kill":
            return f"kill -9 broker {self.broker}, restart after {hold}"
        if self.kind == "pause":
            return f"pause {self.target} for {hold}"
        if self.kind == "zone":
            return f"zone {self.target} down for {hold}"
        if self.kind == "tear":
            return f"kill -9 broker {self.broker}, tear its WAL tail, restart after {hold}"
        return f"S3 {self.target} for {hold}"


def plan_faults(opts: TrialsOptions) -> list[Fault]:
    rng = random.Random(opts.seed)
    brokers = list(range(opts.brokers))
    out = []
    for _ in range(opts.count):
        kind = rng.choice(opts.faults)
        fault = Fault(kind, hold_s=round(rng.uniform(1.0, 5.0), 1), seed=rng.randrange(1 << 30))
        if kind in ("kill", "tear"):
            fault.broker = rng.choice(brokers)
        elif kind == "pause":
            fault.target = rng.choice([f"broker-{b}" for b in brokers] + ["controller"])
        elif kind == "zone":
            fault.target = rng.choice(opts.zones)
        else:
            fault.target = rng.choice(["errors", "latency", "down", "down-503"])
        out.append(fault)
    return out


# -- results --------------------------------------------------------------------------------------


@dataclass
class Trial:
    index: int
    kind: str
    what: str
    #: Seconds since the run began.
    injected_at: float = 0.0
    healed_at: float = 0.0
    #: From the heal until every partition had acknowledged a record again; None: it did not.
    recovery_s: float | None = None
    #: The longest time any partition went without an acknowledgement, from the fault to its recovery.
    max_gap_s: float = 0.0
    acked: int = 0
    #: Records whose send failed (the client gave up on them) while this trial ran.
    send_errors: int = 0
    lines: list[str] = field(default_factory=list)
    #: A process of the cluster that died without being told to (a crash).
    crashed: list[str] = field(default_factory=list)


@dataclass
class Report:
    options: dict[str, Any]
    command: str
    started_at: str
    trials: list[Trial] = field(default_factory=list)
    verdict: Verdict = field(default_factory=Verdict)
    #: Violation -> the index of the trial during which the record was acknowledged (-1: before the first).
    attributed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    producer_errors: list[str] = field(default_factory=list)
    group_consumed: int = 0
    group_errors: list[str] = field(default_factory=list)
    #: Problems other than record violations: no recovery, a crash, a read-back that failed.
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cluster_dir: str = ""
    #: ROUTER_COUNTERS summed over the brokers and their restarts.
    router: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.failures

    def by_kind(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind in dict.fromkeys(t.kind for t in self.trials):
            mine = [t for t in self.trials if t.kind == kind]
            recov = [t.recovery_s for t in mine if t.recovery_s is not None]
            gaps = [t.max_gap_s for t in mine]
            counts = dict.fromkeys(Verdict.KINDS, 0)
            for v in self.attributed.get(kind, []):
                counts[v["kind"]] += 1
            out[kind] = {
                "trials": len(mine),
                "acked": sum(t.acked for t in mine),
                "send_errors": sum(t.send_errors for t in mine),
                **counts,
                "recovery_p50_s": round(statistics.median(recov), 2) if recov else None,
                "recovery_max_s": round(max(recov), 2) if recov else None,
                "gap_p50_s": round(statistics.median(gaps), 2),
                "gap_max_s": round(max(gaps), 2),
                "not_recovered": sum(1 for t in mine if t.recovery_s is None),
                "crashes": sum(len(t.crashed) for t in mine),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "command": self.command,
            "options": self.options,
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 1),
            "acked": self.verdict.acked,
            "read": self.verdict.read,
            "violations": self.verdict.counts(),
            "violation_examples": [asdict(v) for v in self.verdict.violations[:20]],
            "failures": self.failures,
            "by_kind": self.by_kind(),
            "trials": [asdict(t) for t in self.trials],
            "producer_errors": len(self.producer_errors),
            "producer_error_examples": self.producer_errors[:10],
            "group_consumed": self.group_consumed,
            "group_errors": self.group_errors[:10],
            "router": self.router,
            "cluster_dir": self.cluster_dir,
        }


def command_line(opts: TrialsOptions) -> str:
    args = ["amq", "chaos", "trials", "--count", str(opts.count), "--seed", str(opts.seed),
            "--faults", ",".join(opts.faults), "--wal", opts.wal, "--brokers", str(opts.brokers),
            "--rate", f"{opts.rate:g}"]  # fmt: skip
    return shlex.join(args)


# -- the run --------------------------------------------------------------------------------------


class Run:
    """One cluster, its load, and the trials on it."""

    def __init__(self, opts: TrialsOptions, say: Say, advance: Callable[[Trial], None]) -> None:
        self.opts = opts
        self.say = say
        self.advance = advance
        self.began = time.monotonic()
        self.state: dict[str, Any] = {}
        self.home = Path()
        self.loads: list[Load] = []
        self.readers: list[GroupReader] = []
        #: (broker, counter) -> (what earlier lives of the broker counted, the last value of this one)
        self.counted: dict[tuple[str, str], tuple[int, int]] = {}
        self.report = Report(asdict(opts), command_line(opts), datetime.now(UTC).isoformat(timespec="seconds"))

    def now(self) -> float:
        return time.monotonic() - self.began

    def start_cluster(self, directory: Path) -> None:
        self.home = directory / "home"
        copts = ClusterOptions(dir=str(directory / "data"), port=0, wal=self.opts.wal, brokers=self.opts.brokers,
                               zones=self.opts.zones, s3_faults=True, wal_capacity=64 << 20, upload_interval_s=0.5,
                               session_timeout=3.0)  # fmt: skip
        self.state = start_cluster(copts, home=self.home, progress=self.say)
        self.report.cluster_dir = str(self.state["dir"])

    def start_load(self) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        bootstrap = str(self.state["bootstrap"])
        topic = unique("trials")
        admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        zones = self.opts.zones
        # Producers naming their zone go through the zone router (a relay when the partition's
        # leader is elsewhere); the one that does not talks to leaders directly.
        ids = [f"trials-p0&automq_az={zones[0]}", f"trials-p1&automq_az={zones[-1]}", "trials-p2"]
        self.loads = [Load(bootstrap, topic, client_id=cid, key=b"p%d" % i, rate=self.opts.rate, config=QUIET).start()
                      for i, cid in enumerate(ids)]  # fmt: skip
        group = unique("trials-group")
        self.readers = [GroupReader(bootstrap, topic, group, client_id=f"trials-g0&automq_az={zones[-1]}",
                                    config=QUIET).start(),
                        GroupReader(bootstrap, topic, group, client_id="trials-g1", config=QUIET).start()]  # fmt: skip
        wait_until(lambda: all(self.last_ack(p) > 0 for p in range(PARTITIONS)), 60, "every partition to acknowledge")
        return topic

    def last_ack(self, part: int) -> float:
        return max(load.last_ack(part) for load in self.loads)

    def first_ack_after(self, part: int, t: float) -> float | None:
        firsts = []
        for load in self.loads:
            times = load.ack_times.get(part) or []
            i = bisect.bisect_left(times, t)
            if i < len(times):
                firsts.append(times[i])
        return min(firsts) if firsts else None

    def max_gap(self, start: float, end: float) -> float:
        worst = 0.0
        for part in range(PARTITIONS):
            times = sorted(x for load in self.loads for x in (load.ack_times.get(part) or []) if start <= x <= end)
            edges = [start, *times, end]
            worst = max(worst, max(b - a for a, b in itertools.pairwise(edges)))
        return worst

    def acked_total(self) -> int:
        return sum(load.total for load in self.loads)

    def scrape_router(self) -> None:
        """Read the router's counters from every broker; a restarted broker counts from 0 again."""
        import json
        import urllib.request

        for entry in self.state.get("brokers") or []:
            if not entry.get("metrics_port"):
                continue
            try:
                url = f"http://127.0.0.1:{entry['metrics_port']}/metrics"
                with urllib.request.urlopen(url, timeout=2) as r:
                    values = json.loads(r.read())
            except (OSError, ValueError):
                continue  # down right now; its earlier count is kept
            for name in ROUTER_COUNTERS:
                key = (f"broker-{entry['id']}", name)
                base, last = self.counted.get(key, (0, 0))
                now = int(values.get(name, 0))
                self.counted[key] = (base + last, now) if now < last else (base, now)
        for name in ROUTER_COUNTERS:
            self.report.router[name] = sum(b + v for (_, n), (b, v) in self.counted.items() if n == name)

    def crashed(self, expected_down: set[str]) -> list[str]:
        """Processes of the cluster that are not running though nothing stopped them."""
        return [name for name, pid in (self.state.get("pids") or {}).items()
                if isinstance(pid, int) and name not in expected_down and not pid_alive(pid, name)]  # fmt: skip

    def restart(self, nodes: list[int], trial: Trial) -> None:
        start_brokers(self.state, nodes)
        write_state(self.state, self.home)
        trial.lines.append(f"{faults.stamp()} started broker(s) {', '.join(map(str, nodes))} again")

    def inject(self, fault: Fault, trial: Trial) -> float:
        """Inject, hold and heal `fault`; the monotonic time the heal began."""
        state = self.state
        if fault.kind in ("kill", "tear"):
            assert fault.broker is not None
            trial.lines.append(faults.kill(state, f"broker-{fault.broker}"))
            if fault.kind == "tear":
                trial.lines.append(faults.wal_tear(state, fault.broker, "tail", fault.seed))
            time.sleep(fault.hold_s)
            healed = time.monotonic()
            self.restart([fault.broker], trial)
            return healed
        if fault.kind == "pause":
            trial.lines.append(f"{faults.stamp()} pausing {fault.target} for {fault.hold_s:g} s")
            trial.lines.append(faults.pause(state, fault.target, fault.hold_s))
            return time.monotonic()
        if fault.kind == "zone":
            killed, line = faults.zone_down(state, fault.target)
            trial.lines.append(line)
            time.sleep(fault.hold_s)
            healed = time.monotonic()
            self.restart(killed, trial)
            return healed
        settings: dict[str, Any] = {"seed": fault.seed}
        down_s = None
        if fault.target == "errors":
            settings["error_rate"] = 0.3
        elif fault.target == "latency":
            settings["latency_ms"] = 200.0
        else:
            down_s = fault.hold_s
            settings["down_mode"] = "503" if fault.target == "down-503" else "refuse"
        trial.lines.append(faults.set_s3_faults(state, clear=True, down_s=down_s, **settings))
        time.sleep(fault.hold_s)
        healed = time.monotonic()
        trial.lines.append(faults.set_s3_faults(state, clear=True))
        return healed

    def trial(self, index: int, fault: Fault) -> Trial:
        trial = Trial(index, fault.kind, fault.describe())
        self.scrape_router()
        acked_before = self.acked_total()
        injected = time.monotonic()
        trial.injected_at = injected - self.began
        try:
            healed = self.inject(fault, trial)
        except (FaultError, ClusterError) as e:
            # A broker that does not come back (its WAL recovery failed, say) is a finding, not bad input.
            self.report.failures.append(f"trial {index} ({trial.what}): {e}")
            trial.crashed = self.crashed(set())
            return trial
        trial.healed_at = healed - self.began
        deadline = healed + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            firsts = [self.first_ack_after(p, healed) for p in range(PARTITIONS)]
            if all(f is not None for f in firsts):
                recovered = max(f for f in firsts if f is not None)
                trial.recovery_s = round(recovered - healed, 3)
                trial.max_gap_s = round(self.max_gap(injected - 1.0, recovered), 3)
                break
            time.sleep(0.1)
        else:
            trial.max_gap_s = round(time.monotonic() - injected, 3)
            self.report.failures.append(
                f"trial {index} ({trial.what}): not every partition acknowledged within {RECOVERY_TIMEOUT_S:g} s"
            )
        trial.crashed = self.crashed(set())
        for name in trial.crashed:
            self.report.failures.append(f"trial {index} ({trial.what}): {name} died without being stopped")
        time.sleep(self.opts.settle_s)
        trial.acked = self.acked_total() - acked_before
        return trial

    def run(self, directory: Path) -> Report:
        self.start_cluster(directory)
        try:
            topic = self.start_load()
            for i, fault in enumerate(plan_faults(self.opts)):
                trial = self.trial(i, fault)
                self.report.trials.append(trial)
                self.advance(trial)
                if trial.recovery_s is None or trial.crashed:
                    break  # what comes next would measure the damage, not the next fault
            self.finish(topic)
        finally:
            self.stop()
        self.report.elapsed_s = self.now()
        return self.report

    def finish(self, topic: str) -> None:
        self.scrape_router()
        self.say("stopping the load; reading everything back")
        for load in self.loads:
            try:
                load.finish()
            except TimeoutError as e:
                self.report.failures.append(str(e))
            self.report.producer_errors += load.errors
        for reader in self.readers:
            reader.finish()
            self.report.group_consumed += len(reader.seen)
            self.report.group_errors += reader.errors
        try:
            got = read_records(str(self.state["bootstrap"]), topic, timeout=120, config=QUIET)
        except ReadBackError as e:
            self.report.failures.append(str(e))
            got = {}
        self.report.verdict = verify(self.loads, got)
        self.attribute()
        starts = [t.injected_at for t in self.report.trials]
        for load in self.loads:
            for t in load.error_times:
                i = bisect.bisect_right(starts, t - self.began) - 1
                if i >= 0:
                    self.report.trials[i].send_errors += 1

    def attribute(self) -> None:
        """Each violation to the trial during which its record was acknowledged (or sent, if never)."""
        if self.report.verdict.ok:
            return
        when: dict[tuple[str, int, int], float] = {}
        for load in self.loads:
            key = (load.key or b"").decode()
            for part, acks in load.acked.items():
                for (offset, _), t in zip(acks, load.ack_times.get(part, []), strict=False):
                    when[(key, part, offset)] = t - self.began
        starts = [t.injected_at for t in self.report.trials]
        for v in self.report.verdict.violations:
            t = when.get((v.key, v.partition, v.offset))
            i = bisect.bisect_right(starts, t) - 1 if t is not None else -1
            kind = self.report.trials[i].kind if i >= 0 else "before the first fault"
            self.report.attributed.setdefault(kind, []).append({**asdict(v), "trial": i})

    def stop(self) -> None:
        if not self.state:
            return
        for load in self.loads:
            load.stop.set()
        for reader in self.readers:
            reader.stop.set()
        with contextlib.suppress(FaultError):
            faults.set_s3_faults(self.state, clear=True)
        stop_cluster(self.state, timeout=20)
        remove_state(self.home)


def run_trials(opts: TrialsOptions, say: Say, advance: Callable[[Trial], None]) -> Report:
    """Run the trials on a cluster of their own; its directory goes unless asked to keep it or a check failed."""
    check_options(opts)
    directory = Path(opts.dir) if opts.dir else Path(tempfile.mkdtemp(prefix="amq-trials-"))
    directory.mkdir(parents=True, exist_ok=True)
    run = Run(opts, say, advance)
    report = run.report
    try:
        report = run.run(directory)
    finally:
        if report.ok and not opts.keep and opts.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return report


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render(report: Report, console: Any) -> None:
    """The table per fault kind, the totals and what went wrong."""
    from rich.table import Table

    table = Table(title=f"amq chaos trials: {report.command}")
    for col in ("fault", "trials", "acked", "lost", "dup", "reordered", "offset gone", "gap p50 s", "gap max s",
                "after heal p50 s", "after heal max s", "send errors"):  # fmt: skip
        table.add_column(col, justify="left" if col == "fault" else "right")
    for kind, row in report.by_kind().items():
        gone = row["offset_missing"] + row["offset_changed"]
        table.add_row(kind, str(row["trials"]), f"{row['acked']:,}", str(row["lost"]), str(row["duplicated"]),
                      str(row["reordered"]), str(gone), _seconds(row["gap_p50_s"]), _seconds(row["gap_max_s"]),
                      _seconds(row["recovery_p50_s"]),
                      _seconds(row["recovery_max_s"]) if not row["not_recovered"] else "never",
                      str(row["send_errors"]))  # fmt: skip
    console.print(table)
    console.print(
        "gap: the longest time a partition acknowledged nothing, from the fault until every partition "
        "acknowledged again after the heal; after heal: from the heal (restart, SIGCONT, S3 cleared) until then"
    )
    v = report.verdict
    checks = v.summary() if not v.ok else "lost 0, duplicated 0, reordered 0, offsets gone 0"
    console.print(f"{len(report.trials)} trials in {report.elapsed_s:.0f} s; {v.acked:,} records acknowledged, "
                  f"{v.read:,} read back; {checks}; group consumed {report.group_consumed:,}; "
                  f"producer errors {len(report.producer_errors)}; zone router: "
                  + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report.router.items()))  # fmt: skip
    for line in report.failures:
        console.print(f"[red]{line}[/red]")
    if report.producer_errors:
        # Not a violation (the client was told; such a record may or may not be written), but a
        # healed fault should not make an idempotent producer give up on records.
        worst = max(report.trials, key=lambda t: t.send_errors, default=None)
        where = f"; most in trial {worst.index + 1} ({worst.what})" if worst and worst.send_errors else ""
        console.print(f"[yellow]{len(report.producer_errors)} sends failed, e.g. {report.producer_errors[0]}"
                      f"{where}[/yellow]")  # fmt: skip
    for v in report.verdict.violations[:10]:
        console.print(f"[red]{v.describe()}[/red]")
