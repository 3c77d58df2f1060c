"""`amq perf run` end to end, as a user runs it: a subprocess against a real Kafka-compatible broker.

The broker is the `perf_target` fixture, chosen by AMQ_PERF_TARGET:
  amq (default)  a local amq cluster started with `amq cluster up` in a temp AMQ_HOME;
                 its cluster.json supplies the metrics URL and broker pid, as for a user
  tansu          Tansu with memory storage (tests/peers.py): any Kafka-compatible broker
  external       the cluster at AMQ_PERF_BOOTSTRAP (broker pids in AMQ_PERF_BROKER_PIDS=pid,pid)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from automq_cli.perf.target import NO_CLUSTER
from tests.metrics_stub import growing_counters
from tests.peers import Tansu, free_port

REPO = Path(__file__).resolve().parents[2]
LATENCY_KEYS = ("p50", "p75", "p90", "p95", "p99", "p999", "max")


@dataclass
class PerfTarget:
    name: str
    bootstrap: str
    broker_pids: list[int] = field(default_factory=list)
    # Client settings this broker needs to behave in a few-second test (not part of what is measured).
    client_args: list[str] = field(default_factory=list)
    # An AMQ_HOME whose cluster.json describes this cluster (an amq cluster: real metrics).
    amq_home: Path | None = None


def _amq(args: list[str], home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", *args],
        cwd=REPO,
        env={**os.environ, "AMQ_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def perf_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PerfTarget]:
    kind = os.environ.get("AMQ_PERF_TARGET", "external" if os.environ.get("AMQ_PERF_BOOTSTRAP") else "amq")
    if kind == "external":
        pids = [int(p) for p in os.environ.get("AMQ_PERF_BROKER_PIDS", "").split(",") if p.strip()]
        yield PerfTarget("external", os.environ["AMQ_PERF_BOOTSTRAP"], pids)
    elif kind == "amq":
        home = tmp_path_factory.mktemp("amq-home")
        up = _amq(["cluster", "up", "--port", "0"], home)
        try:
            assert up.returncode == 0, f"amq cluster up failed: {up.stderr.strip()[-1000:]}"
            state = json.loads((home / "cluster.json").read_text())
            pids = [b["pid"] for b in state.get("brokers", []) if b.get("pid")]
            yield PerfTarget("amq", state["bootstrap"], pids, amq_home=home)
        finally:
            _amq(["cluster", "down"], home, timeout=60)
    elif kind == "tansu":
        tansu = Tansu(tmp_path_factory.mktemp("tansu")).start()
        try:
            assert tansu.pid is not None
            # Tansu forms consumer groups only after about half a session timeout.
            yield PerfTarget(
                "tansu",
                tansu.bootstrap,
                [tansu.pid],
                ["-C", "session.timeout.ms=3000", "-C", "heartbeat.interval.ms=300"],
            )
        finally:
            tansu.stop()
    else:
        raise pytest.UsageError(f"AMQ_PERF_TARGET must be amq, tansu or external, not {kind!r}")


def run_perf(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("AMQ_PERF_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", "perf", "run", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def counters_url() -> Iterator[str]:
    """Stands in for the amq broker's metrics endpoint: counters that grow on every GET."""
    step = {
        "s3_put_requests": 7,
        "s3_put_bytes": 7_000_000,
        "s3_get_requests": 1,
        "s3_get_bytes": 1_000,
        "s3_list_requests": 0,
        "s3_delete_requests": 0,
        "wal_bytes_written": 8_000_000,
        "cross_zone_bytes": 0,
    }
    with growing_counters(step) as url:
        yield url


def check_common(result: dict[str, Any]) -> None:
    prod, cons = result["produce"], result["consume"]
    assert prod["errors"] == 0, prod.get("last_error")
    assert cons["errors"] == 0, cons.get("last_error")
    assert prod["messages"] > 0 and prod["total_messages"] >= prod["messages"]
    assert cons["drained"] is True
    for sub in cons["per_subscription"]:
        # Every acknowledged record reached every subscription, exactly once.
        assert sub["expected"] == prod["total_messages"]
        assert sub["unique"] == sub["expected"], sub
        assert sub["received"] == sub["expected"], sub
    for key in ("publish_latency_ms", "e2e_latency_ms"):
        lat = result[key]
        values = [lat[k] for k in LATENCY_KEYS]
        assert all(v is not None and v > 0 for v in values), (key, lat)
        assert values == sorted(values), (key, lat)
        assert lat["p50"] <= lat["avg"] * 3
    assert result["intervals"] and all(
        set(row) >= {"t", "phase", "produce_msg_per_s", "consume_mib_per_s", "backlog_messages", "errors"}
        for row in result["intervals"]
    )


def test_steady_run_on_the_local_cluster_state(perf_target: PerfTarget, counters_url: str, tmp_path: Path) -> None:
    """No --bootstrap: the target, metrics URL and broker pids come from $AMQ_HOME/cluster.json."""
    home = perf_target.amq_home
    if home is None:
        # Not an amq cluster: describe it in a cluster.json of our own, with a stand-in metrics endpoint.
        home = tmp_path / "home"
        home.mkdir()
        (home / "cluster.json").write_text(
            json.dumps(
                {
                    "bootstrap": perf_target.bootstrap,
                    "metrics": [counters_url],
                    "brokers": [{"id": 0, "pid": pid, "zone": "az1"} for pid in perf_target.broker_pids],
                    "wal_kind": "file",
                }
            )
        )
    out, chart = tmp_path / "run.json", tmp_path / "run.png"
    args = ["--rate", "1000", "--record-size", "512B", "--duration", "3s", "--warmup", "1s"]
    args += ["--partitions", "4", "--subscriptions", "2", "--consumers", "1", "--name", "itest-steady"]
    # The chart needs matplotlib, an optional dependency: draw it when it is installed.
    want_chart = importlib.util.find_spec("matplotlib") is not None
    extra = ["--chart-out", str(chart)] if want_chart else []
    proc = run_perf(
        [*args, *perf_target.client_args, "--json-out", str(out), *extra],
        env={"AMQ_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    check_common(result)
    assert result["bootstrap"] == perf_target.bootstrap
    assert result["mode"] == "steady" and result["duration_s"] == pytest.approx(3.0)
    assert result["workload"]["name"] == "itest-steady" and result["workload"]["messageSize"] == 512
    assert len(result["consume"]["per_subscription"]) == 2
    # Rate limiting holds: 1000 msg/s target.
    assert 800 <= result["produce"]["msg_per_s"] <= 1100
    assert result["consume"]["msg_per_s"] == pytest.approx(2 * result["produce"]["msg_per_s"], rel=0.35)
    cluster = result["cluster"]
    assert cluster["metrics_available"] is True
    assert cluster["wal_kind"] == "file" and cluster["zones"] == 1 and cluster["brokers"] >= 1
    assert set(cluster["s3"]) == {"put", "get", "list", "delete", "put_bytes", "get_bytes"}
    if perf_target.amq_home is not None:
        # The real broker's counters: ~1.5 MiB acknowledged in the window went through its WAL.
        assert cluster["wal_bytes_written"] >= result["produce"]["bytes"] * 0.5
        assert cluster["cross_zone_bytes"] == 0
        # The broker's histograms over the window: its Produce requests, not those before it.
        (broker,) = cluster["broker_latency"]
        produced = broker["latency"]["produce_total"]
        assert 0 < produced["count"] <= result["produce"]["messages"]
        assert produced["p50_ms"] <= produced["p99_ms"] <= produced["max_ms"]
    else:
        assert cluster["s3"]["put"] == 7 and cluster["wal_bytes_written"] == 8_000_000
    if perf_target.broker_pids:
        assert cluster["broker_rss_bytes"] > 0 and cluster["broker_cpu_percent"] >= 0
    # Not a terminal: one plain line per interval on stdout.
    lines = [ln for ln in proc.stdout.splitlines() if " msg/s " in ln and "| backlog" in ln]
    assert len(lines) == len(result["intervals"])
    if want_chart:
        assert chart.read_bytes()[:4] == b"\x89PNG"


def test_catch_up_run(perf_target: PerfTarget, tmp_path: Path) -> None:
    out = tmp_path / "catchup.json"
    args = ["--bootstrap", perf_target.bootstrap, "--rate", "3000", "--backlog", "2MiB", "--duration", "2s"]
    args += ["--warmup", "0", "--partitions", "4", "--json-out", str(out)]
    # An empty AMQ_HOME: the run must not pick up any local cluster's metrics.
    proc = run_perf([*args, *perf_target.client_args], env={"AMQ_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    check_common(result)
    cu = result["catch_up"]
    assert result["mode"] == "catch-up" and cu["caught_up"] is True
    assert cu["backlog_messages"] > 0 and cu["backlog_bytes"] >= 1 * 1024 * 1024
    assert cu["read_mib_per_s"] > 0
    assert cu["publish_latency_ms_before"]["p99"] and cu["publish_latency_ms_during"]["p99"]
    assert [p["name"] for p in result["phases"]][:3] == ["backlog", "catch-up", "measure"]
    # --bootstrap names no cluster.json here, so there is no metrics source, and the result says so.
    assert result["cluster"]["metrics_available"] is False and result["cluster"]["note"]
    assert "counters omitted" in proc.stdout


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "unknown key": (["{wl_unknown}"], "unknown workload key 'partitionsPerTopik'"),
    "unreadable yaml": (["{wl_broken}"], "is not valid YAML"),
    "missing file": (["{tmp}/nope.yaml"], "does not exist"),
    "negative rate": (["--rate", "-5"], "rate must be >= 0"),
    "zero duration": (["--duration", "0s"], "duration must be positive"),
    "bad duration": (["--duration", "soon"], "cannot read --duration"),
    "bad client property": (["-P", "no.such.property=1"], "No such configuration property"),
    "tiny records": (["--record-size", "4B"], "at least 8 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_with_one_line(case: str, tmp_path: Path) -> None:
    wl_unknown = _write(tmp_path, "unknown.yaml", "topics: 1\npartitionsPerTopik: 3\n")
    wl_broken = _write(tmp_path, "broken.yaml", "topics: [1, 2\nmessageSize: 3\n")
    args, expected = BAD_INPUTS[case]
    args = [a.format(wl_unknown=wl_unknown, wl_broken=wl_broken, tmp=tmp_path) for a in args]
    # An unreachable bootstrap: every one of these must fail before connecting anywhere.
    proc = run_perf([*args, "--bootstrap", f"127.0.0.1:{free_port()}"], timeout=60)
    assert_one_line_failure(proc, expected)


def test_no_local_cluster_and_no_bootstrap(tmp_path: Path) -> None:
    proc = run_perf(["--duration", "1s"], env={"AMQ_HOME": str(tmp_path)})
    assert_one_line_failure(proc, NO_CLUSTER)


def test_unreachable_bootstrap_is_detected_quickly(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = run_perf(["--bootstrap", f"127.0.0.1:{free_port()}", "--connect-timeout", "3s", "--duration", "1s"])
    assert_one_line_failure(proc, "cannot reach the Kafka bootstrap")
    assert time.monotonic() - start < 15


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "\n" not in err, err
    assert expected in err, err


def test_three_broker_cluster_gets_traffic_on_every_broker(tmp_path: Path) -> None:
    """3 brokers in 3 zones (nfs WAL): partitions spread over them, so every broker takes produce and fetch
    traffic; the cluster block sums the counters of all 3 and reports each broker's share."""
    from automq_cli.perf.metrics import fetch_counters as fetch_metrics
    from tests.integration.cluster_fixture import start_local_cluster

    # The zone router off: workers that name no zone would all go through the zone they bootstrap to.
    cluster = start_local_cluster(tmp_path, brokers=3, zones=3, wal="nfs", zone_router=False)
    try:
        before = [fetch_metrics(url) for url in cluster.metrics_urls]
        out = tmp_path / "run.json"
        args = ["--rate", "4000", "--record-size", "1KiB", "--duration", "4s", "--warmup", "1s"]
        args += ["--partitions", "12", "--name", "itest-3-brokers", "--json-out", str(out)]
        # No --bootstrap: the target, the 3 metrics URLs and the 3 broker pids come from cluster.json.
        proc = run_perf(args, env={"AMQ_HOME": str(cluster.home)}, timeout=90)
        assert proc.returncode == 0, proc.stderr[-2000:]
        after = [fetch_metrics(url) for url in cluster.metrics_urls]
    finally:
        cluster.stop()
    result = json.loads(out.read_text())
    check_common(result)
    assert result["bootstrap"] == cluster.bootstrap and result["bootstrap"].count(",") == 2
    # Each broker's own endpoint: it received produce traffic and served fetches.
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert a["broker_id"] == i
        # (a counter appears at its first increment)
        assert a["produce_bytes"] - b.get("produce_bytes", 0) > 0, f"broker {i} got no produce traffic"
        assert a["fetch_bytes"] - b.get("fetch_bytes", 0) > 0, f"broker {i} served no fetches"
    c = result["cluster"]
    assert c["metrics_available"] is True and c["brokers"] == 3 and c["zones"] == 3 and c["wal_kind"] == "nfs"
    assert len(c["sources"]) == 3
    per = c["per_broker"]
    assert [(b["id"], b["zone"]) for b in per] == [(0, "az1"), (1, "az2"), (2, "az3")]
    assert all(b["pid"] == cluster.broker_pid(b["id"]) for b in per)
    assert all(b["produce_bytes"] > 0 and b["wal_bytes_written"] > 0 for b in per), per
    # Totals are sums over the brokers; CPU summed, RSS: largest broker's peak and all brokers' together.
    assert c["wal_bytes_written"] == sum(b["wal_bytes_written"] for b in per)
    assert c["s3"]["put"] == sum(b["s3_put_requests"] for b in per)
    assert c["other_counters"]["produce_bytes"] == sum(b["produce_bytes"] for b in per)
    assert c["other_counters"]["produce_bytes"] >= result["produce"]["bytes"] * 0.8
    assert c["broker_cpu_percent"] == pytest.approx(sum(b["cpu_percent"] for b in per), abs=0.2)
    assert c["broker_rss_bytes"] == max(b["rss_peak_bytes"] for b in per) > 0
    assert c["broker_rss_total_bytes"] > c["broker_rss_bytes"]
    assert "all brokers together" in proc.stdout and "broker 2 (az3)" in proc.stdout
