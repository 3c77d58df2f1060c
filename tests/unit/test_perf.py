"""Unit tests of `amq perf`'s pure parts: units, workloads, targets, histograms, metrics, output."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from automq_cli.perf.display import format_line, render_summary
from automq_cli.perf.errors import PerfError
from automq_cli.perf.metrics import ClusterMetrics
from automq_cli.perf.ratelimit import TokenBucket
from automq_cli.perf.stats import SUMMARY_KEYS, brief_ms, decode_into, new_histogram, record_many, summary_ms
from automq_cli.perf.target import NO_CLUSTER, BrokerInfo, Target, load_cluster_state, resolve_target
from automq_cli.perf.units import parse_count, parse_duration, parse_size
from automq_cli.perf.worker import _next_boundary
from automq_cli.perf.workload import load_payload, load_workload, parse_workload
from tests.metrics_stub import growing_counters

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "workloads"


# ---- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64KiB", 65536),
        ("1MB", 1_000_000),
        ("256MiB", 256 * 1024**2),
        ("1.5GiB", int(1.5 * 1024**3)),
        (512, 512),
    ],
)
def test_parse_size(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("10s", 10.0), ("2m", 120.0), ("500ms", 0.5), ("3", 3.0), (7, 7.0)])
def test_parse_duration(text: Any, expected: float) -> None:
    assert parse_duration(text) == expected


def test_parse_count_and_bad_units() -> None:
    assert parse_count("50k") == 50_000
    assert parse_count("-5") == -5
    for bad in ("ten", "5 parsecs"):
        with pytest.raises(PerfError):
            parse_duration(bad)
    with pytest.raises(PerfError, match="unknown unit"):
        parse_size("3 TiBx")


# ---- workloads -------------------------------------------------------------------------------


def test_every_template_loads_validates_and_says_what_it_models() -> None:
    names = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
    assert names == ["catch-up-read", "lowest-latency", "max-throughput", "steady-state"]
    for path in TEMPLATES.glob("*.yaml"):
        workload, warnings = load_workload(path)
        workload.validate()
        assert not warnings
        assert path.read_text().startswith("# "), f"{path.name} must open with what it models"
    lowest, _ = load_workload(TEMPLATES / "lowest-latency.yaml")
    assert (lowest.message_size, lowest.producer_config["linger.ms"], lowest.subscriptions_per_topic) == (
        65536,
        "0",
        4,
    )
    steady, _ = load_workload(TEMPLATES / "steady-state.yaml")
    assert (
        steady.message_size,
        steady.producer_config["linger.ms"],
        steady.producer_config["batch.size"],
    ) == (
        1024,
        "3",
        "65536",
    )
    assert load_workload(TEMPLATES / "catch-up-read.yaml")[0].catch_up
    assert load_workload(TEMPLATES / "max-throughput.yaml")[0].producer_rate == 0


def test_omb_keys_and_property_text() -> None:
    data = {
        "name": "omb",
        "topics": 2,
        "partitionsPerTopic": 8,
        "messageSize": 100,
        "subscriptionsPerTopic": 3,
        "consumerPerSubscription": 2,
        "producersPerTopic": 4,
        "producerRate": 5000,
        "consumerBacklogSizeGB": 0.5,
        "testDurationMinutes": 0.5,
        "warmupDurationMinutes": 0,
        "useRandomizedPayloads": True,
        "producerConfig": "acks=all\nlinger.ms=1\n# a comment\n",
        "consumerConfig": {"enable.auto.commit": False},
        "topicConfig": {"retention.ms": 60000},
    }
    w, warnings = parse_workload(data)
    assert (w.topics, w.partitions_per_topic, w.message_size) == (2, 8, 100)
    assert (w.subscriptions_per_topic, w.consumer_per_subscription, w.producers_per_topic) == (3, 2, 4)
    assert w.producer_rate == 5000
    assert w.consumer_backlog_size_bytes == 512 * 1024**2
    assert (w.test_duration_s, w.warmup_duration_s) == (30, 0)
    assert w.producer_config == {"acks": "all", "linger.ms": "1"}
    assert w.consumer_config == {"enable.auto.commit": "false"}
    assert w.topic_config == {"retention.ms": "60000"}
    assert len(warnings) == 1 and "useRandomizedPayloads" in warnings[0]
    assert w.to_omb()["consumerBacklogSizeGB"] == 0.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"partitionsPerTopik": 3}, "unknown workload key 'partitionsPerTopik'"),
        ({"producerRate": "fast"}, "must be a number"),
        ({"topics": 1.5}, "whole number"),
        ({"producerConfig": "acks"}, "expected key=value"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_workload_keys(data: Any, message: str) -> None:
    with pytest.raises(PerfError, match=message):
        parse_workload(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"producer_rate": -1}, "rate must be >= 0"),
        ({"test_duration_s": 0}, "duration must be positive"),
        ({"message_size": 4}, "at least 8 bytes"),
        ({"partitions_per_topic": 0}, "partitionsPerTopic must be at least 1"),
        ({"subscriptions_per_topic": 0}, "needs a consumer"),
        ({"key_distributor": "SOMETIMES"}, "keyDistributor"),
    ],
)
def test_impossible_workloads(changes: dict[str, Any], message: str) -> None:
    w, _ = parse_workload({})
    with pytest.raises(PerfError, match=message):
        w.replace(**changes).validate()


def test_workload_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("topics: [1, 2\npartitions: 3\n")
    with pytest.raises(PerfError) as err:
        load_workload(bad)
    assert "not valid YAML at line" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PerfError, match="does not exist"):
        load_workload(tmp_path / "missing.yaml")
    with pytest.raises(PerfError, match="is a directory"):
        load_workload(tmp_path)


def test_payload_file_is_repeated_to_the_record_size(tmp_path: Path) -> None:
    (tmp_path / "payload.data").write_bytes(b"abc")
    wl = tmp_path / "w.yaml"
    wl.write_text("messageSize: 10\npayloadFile: payload.data\n")
    w, _ = load_workload(wl)
    assert load_payload(w) == b"abcabcabca"
    assert len(load_payload(w.replace(payload_file=None))) == 10


# ---- target ----------------------------------------------------------------------------------


def test_missing_cluster_state_is_the_documented_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQ_HOME", str(tmp_path))
    with pytest.raises(PerfError) as err:
        resolve_target(None)
    assert str(err.value) == NO_CLUSTER
    # --bootstrap needs no state file.
    assert resolve_target("127.0.0.1:1").bootstrap == "127.0.0.1:1"


def test_cluster_state_supplies_bootstrap_metrics_and_pids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQ_HOME", str(tmp_path))
    state = {
        "bootstrap": "127.0.0.1:9092",
        "metrics": ["http://127.0.0.1:1/m"],
        "brokers": [{"id": 0, "pid": 11, "zone": "az1"}, {"id": 1, "pid": 12, "zone": "az2"}],
        "wal_kind": "file",
    }
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    t = resolve_target(None, broker_pids=[13])
    assert t.bootstrap == "127.0.0.1:9092"
    assert t.metrics_urls == ["http://127.0.0.1:1/m"]
    assert t.broker_pids == [11, 12, 13]
    assert (t.wal_kind, t.zones) == ("file", ["az1", "az2"])
    # The same cluster named by --bootstrap keeps its metrics; another cluster does not get them.
    assert resolve_target("127.0.0.1:9092").metrics_urls == ["http://127.0.0.1:1/m"]
    assert resolve_target("127.0.0.1:9999").metrics_urls == []
    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(PerfError, match="cannot read the cluster state"):
        load_cluster_state()


# ---- histograms and rate limiting ------------------------------------------------------------


def test_histograms_merge_across_processes_and_percentiles_are_ordered() -> None:
    a, b = new_histogram(), new_histogram()
    record_many(a, [1000] * 90)  # 1 ms
    record_many(b, [10_000] * 9 + [100_000])  # 10 ms, one 100 ms outlier
    merged = new_histogram()
    decode_into(merged, a.encode())
    decode_into(merged, b.encode())
    decode_into(merged, None)
    s = summary_ms(merged)
    assert list(s) == list(SUMMARY_KEYS)
    values = [s[k] for k in SUMMARY_KEYS if k != "avg"]
    assert values == sorted(values)
    assert s["p50"] == pytest.approx(1.0, rel=0.01)
    assert s["max"] == pytest.approx(100.0, rel=0.01)
    assert summary_ms(new_histogram())["p99"] is None
    assert brief_ms(merged)["p99"] == pytest.approx(10.0, rel=0.01)
    record_many(a, [-5, 10**12])  # clock skew and absurd values are clamped, not fatal


def test_token_bucket_holds_the_rate_and_banks_little() -> None:
    bucket = TokenBucket(1000.0, now=0.0)
    sent = 0
    t = 0.0
    while t < 2.0:
        t += 0.0013
        n = bucket.available(t)
        bucket.spend(n)
        sent += n
    assert 1990 <= sent <= 2000
    idle = TokenBucket(1000.0, now=0.0)
    assert idle.available(10.0) == 50  # 50 ms banked, not 10 s
    idle.spend(50)
    assert idle.wait_s() == pytest.approx(0.001)


def test_report_boundaries_are_shared_by_all_workers() -> None:
    assert _next_boundary(100.0, 1.0, 100.2) == 101.0
    assert _next_boundary(100.0, 1.0, 101.0) == 102.0
    assert _next_boundary(100.0, 0.5, 99.0) == 100.5


# ---- cluster metrics -------------------------------------------------------------------------


@pytest.fixture
def counters_url() -> Iterator[str]:
    """A metrics endpoint whose counters grow by a fixed step on every GET."""
    step = {
        "s3_put_requests": 10,
        "s3_put_bytes": 1000,
        "s3_get_requests": 2,
        "s3_get_bytes": 200,
        "s3_list_requests": 1,
        "s3_delete_requests": 0,
        "wal_bytes_written": 5000,
        "cross_zone_bytes": 0,
        "uploads": 3,
    }
    with growing_counters(step, {"wal_kind": "file"}) as url:
        yield url


def test_cluster_block_records_counter_deltas_cpu_and_rss(counters_url: str) -> None:
    target = Target(
        bootstrap="x:1",
        metrics_urls=[counters_url],
        brokers=[BrokerInfo(id=0, pid=os.getpid(), zone="az1")],
        wal_kind=None,
        zones=["az1"],
    )
    m = ClusterMetrics(target)
    m.start()
    sum(i * i for i in range(200_000))  # some CPU for this "broker"
    assert m.sample() is not None
    m.finish()
    c = m.result()
    assert c["metrics_available"] is True
    assert c["s3"] == {"put": 10, "get": 2, "list": 1, "delete": 0, "put_bytes": 1000, "get_bytes": 200}
    assert (c["wal_bytes_written"], c["cross_zone_bytes"]) == (5000, 0)
    assert c["wal_kind"] == "file"  # from the endpoint when cluster.json has none
    assert (c["zones"], c["zone_names"], c["brokers"]) == (1, ["az1"], 1)
    assert c["other_counters"] == {"uploads": 3}
    assert c["other_at_end"] == {"uploads": 6}
    assert c["broker_rss_bytes"] > 0 and c["broker_cpu_percent"] >= 0


def test_cluster_block_leaves_the_brokers_histogram_summaries_out_of_the_counters() -> None:
    """/metrics nests `latency` and `sizes` objects (docs/perf.md): never summed as counters."""
    fixed = {
        "latency": {"produce_total": {"count": 10, "sum_s": 0.5, "p50_ms": 4.0, "p99_ms": 9.0, "max_ms": 9.5}},
        "sizes": {"wal_group_bytes": {"count": 3, "sum_bytes": 3000, "p50_bytes": 900, "p99_bytes": 1100,
                                      "max_bytes": 1100}},
    }  # fmt: skip
    with growing_counters({"s3_put_requests": 5, "uploads": 1}, fixed) as url:
        m = ClusterMetrics(Target(bootstrap="x:1", metrics_urls=[url]))
        m.start()
        m.finish()
        c = m.result()
    assert c["metrics_available"] is True and c["s3"]["put"] == 5
    assert c["other_counters"] == {"uploads": 1} and c["other_at_end"] == {"uploads": 2}


def test_cluster_block_without_a_source_says_so() -> None:
    m = ClusterMetrics(Target(bootstrap="x:1"))
    m.start()
    m.finish()
    c = m.result()
    assert c["metrics_available"] is False and "counters omitted" in c["note"]
    dead = ClusterMetrics(Target(bootstrap="x:1", metrics_urls=["http://127.0.0.1:9/none"]))
    dead.start()
    dead.finish()
    c = dead.result()
    assert c["metrics_available"] is False and "s3" not in c and c["warnings"]


def test_cluster_block_of_several_brokers_sums_counters_and_keeps_each_brokers_share() -> None:
    """One URL per broker: totals are sums; each broker's own counters land in its per_broker entry."""
    step = {"s3_put_requests": 2, "s3_put_bytes": 100, "wal_bytes_written": 1000, "produce_bytes": 900}
    with contextlib.ExitStack() as stack:
        # Brokers 0 and 1 say who they are (broker_id); broker 2's endpoint does not, its metrics_port does.
        urls = [stack.enter_context(growing_counters(step, {"broker_id": i, "zone": f"az{i + 1}"})) for i in (0, 1)]
        urls.append(stack.enter_context(growing_counters({**step, "produce_bytes": 300})))
        port2 = int(urls[2].split(":")[2].split("/")[0])
        target = Target(
            bootstrap="a:1,b:2,c:3",
            metrics_urls=urls,
            brokers=[
                BrokerInfo(id=i, pid=os.getpid(), zone=f"az{i + 1}", metrics_port=port2 if i == 2 else None)
                for i in range(3)
            ],
            zones=["az1", "az2", "az3"],
        )
        m = ClusterMetrics(target)
        m.start()
        sum(i * i for i in range(200_000))
        m.sample()
        m.finish()
        c = m.result()
    assert c["brokers"] == 3 and c["zones"] == 3
    assert c["s3"]["put"] == 6 and c["s3"]["put_bytes"] == 300 and c["wal_bytes_written"] == 3000
    assert c["other_counters"] == {"produce_bytes": 2100}
    assert "broker_id" not in c["other_counters"] and "broker_id" not in c["other_at_end"]
    per = c["per_broker"]
    assert [b["id"] for b in per] == [0, 1, 2]
    assert [b["produce_bytes"] for b in per] == [900, 900, 300]
    assert all(b["s3_put_requests"] == 2 and b["wal_bytes_written"] == 1000 for b in per)
    # CPU is summed over brokers; RSS: the largest broker's peak, and all brokers' together.
    assert c["broker_cpu_percent"] == pytest.approx(sum(b["cpu_percent"] for b in per), abs=0.2)
    assert c["broker_rss_bytes"] == max(b["rss_peak_bytes"] for b in per)
    assert c["broker_rss_total_bytes"] >= 3 * min(b["rss_peak_bytes"] for b in per) > 0
    out = io.StringIO()
    render_summary({**_fake_result(), "cluster": c}, Console(file=out, width=200, soft_wrap=True))
    text = out.getvalue()
    assert "sum over brokers" in text and "all brokers together" in text
    assert "broker 2 (az3): CPU" in text and "produce 300 B" in text


def test_cluster_state_ties_metrics_ports_to_brokers(tmp_path: Path) -> None:
    state = {
        "bootstrap": "127.0.0.1:9092,127.0.0.1:9093",
        "metrics": ["http://127.0.0.1:9700/metrics", "http://127.0.0.1:9701/metrics"],
        "brokers": [
            {"id": 0, "pid": 11, "zone": "az1", "port": 9092, "metrics_port": 9700},
            {"id": 1, "pid": 12, "zone": "az2", "port": 9093, "metrics_port": 9701},
        ],
    }
    path = tmp_path / "cluster-state.json"
    path.write_text(json.dumps(state))
    t = load_cluster_state(path)
    assert [(b.id, b.metrics_port) for b in t.brokers] == [(0, 9700), (1, 9701)]


# ---- output ----------------------------------------------------------------------------------


def _fake_result() -> dict[str, Any]:
    lat = {"avg": 2.0, "p50": 1.5, "p75": 2.0, "p90": 3.0, "p95": 4.0, "p99": 6.0, "p999": 9.0, "max": 12.0}
    row = {
        "t": 1.0,
        "phase": "measure",
        "produce_msg_per_s": 1000.0,
        "produce_mib_per_s": 0.98,
        "consume_msg_per_s": 1000.0,
        "consume_mib_per_s": 0.98,
        "backlog_messages": 3,
        "errors": 0,
        "publish_latency_ms": {"p50": 1.5, "p99": 6.0, "max": 12.0},
        "e2e_latency_ms": {"p50": None, "p99": None, "max": None},
    }
    w, _ = parse_workload({"name": "unit"})
    return {
        "workload": w.to_omb(),
        "bootstrap": "127.0.0.1:1",
        "duration_s": 2.0,
        "interval_s": 1.0,
        "produce": {
            "messages": 2000,
            "bytes": 2048000,
            "msg_per_s": 1000.0,
            "mib_per_s": 0.98,
            "errors": 0,
            "total_messages": 2000,
        },
        "consume": {
            "messages": 2000,
            "bytes": 2048000,
            "msg_per_s": 1000.0,
            "mib_per_s": 0.98,
            "errors": 0,
            "per_subscription": [{"received": 2000, "unique": 2000, "expected": 2000, "duplicates": 0}],
        },
        "publish_latency_ms": lat,
        "e2e_latency_ms": lat,
        "catch_up": None,
        "phases": [{"name": "warmup", "start_s": 0.0, "duration_s": 1.0}],
        "intervals": [row, {**row, "t": 2.0}],
        "cluster": {"metrics_available": False, "note": "no cluster metrics source"},
    }


def test_line_display_and_summary_render() -> None:
    result = _fake_result()
    line = format_line(result["intervals"][0])
    assert "\n" not in line and "pub p50 1.50 p99 6.00 ms" in line and "e2e p99 - ms" in line
    out = io.StringIO()
    render_summary(result, Console(file=out, width=150, soft_wrap=True))
    text = out.getvalue()
    assert "publish" in text and "end-to-end" in text and "p99.9" in text
    assert "every subscription (1) received all of them" in text
    assert "no cluster metrics source" in text


def test_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from automq_cli.perf.chart import write_chart

    path = tmp_path / "run.png"
    write_chart(_fake_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
