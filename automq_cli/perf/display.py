"""What a run shows while it runs, and the summary at the end.

On a terminal: a rich live table, redrawn each interval. Otherwise (CI, a
pipe, a log file): exactly one plain line per interval, so logs stay greppable.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from automq_cli.perf.stats import SUMMARY_KEYS
from automq_cli.perf.units import human_bytes

_HISTORY = 15


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _num(value: float) -> str:
    return f"{value:,.0f}"


def format_line(row: dict[str, Any]) -> str:
    pub, e2e = row["publish_latency_ms"], row["e2e_latency_ms"]
    return (
        f"{row['t']:7.1f}s {row['phase']:<8} "
        f"produce {_num(row['produce_msg_per_s']):>9} msg/s {row['produce_mib_per_s']:8.2f} MiB/s | "
        f"consume {_num(row['consume_msg_per_s']):>9} msg/s {row['consume_mib_per_s']:8.2f} MiB/s | "
        f"backlog {_num(row['backlog_messages']):>9} | "
        f"pub p50 {_ms(pub['p50'])} p99 {_ms(pub['p99'])} ms | e2e p99 {_ms(e2e['p99'])} ms | "
        f"errors {row['errors']}"
    )


class LineDisplay:
    """One line per interval on stdout; status notes on stderr."""

    def __init__(self, out: Any = None, err: Any = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def status(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def interval(self, row: dict[str, Any]) -> None:
        print(format_line(row), file=self.out, flush=True)

    def close(self) -> None:
        pass


class LiveDisplay:
    """A rich table of the latest intervals, redrawn in place."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self.note = Text("starting", style="dim")
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self) -> Group:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name, justify in (
            ("time", "right"),
            ("phase", "left"),
            ("prod msg/s", "right"),
            ("prod MiB/s", "right"),
            ("cons msg/s", "right"),
            ("cons MiB/s", "right"),
            ("backlog", "right"),
            ("pub p50 ms", "right"),
            ("pub p99 ms", "right"),
            ("e2e p99 ms", "right"),
            ("errors", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in self.rows:
            pub, e2e = row["publish_latency_ms"], row["e2e_latency_ms"]
            table.add_row(
                f"{row['t']:.0f}s",
                row["phase"],
                _num(row["produce_msg_per_s"]),
                f"{row['produce_mib_per_s']:.2f}",
                _num(row["consume_msg_per_s"]),
                f"{row['consume_mib_per_s']:.2f}",
                _num(row["backlog_messages"]),
                _ms(pub["p50"]),
                _ms(pub["p99"]),
                _ms(e2e["p99"]),
                Text(str(row["errors"]), style="red" if row["errors"] else ""),
            )
        return Group(table, self.note)

    def status(self, text: str) -> None:
        # Printed above the live table, so the run's story stays on screen.
        self.console.print(Text(text, style="yellow" if text.startswith("warning") else "dim"))
        self.live.update(self._render())

    def interval(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.note = Text(f"phase: {row['phase']}  (Ctrl-C stops the run and cleans up)", style="dim")
        self.live.update(self._render())

    def close(self) -> None:
        self.live.stop()


def make_display(console: Console) -> LineDisplay | LiveDisplay:
    return LiveDisplay(console) if console.is_terminal else LineDisplay()


def _latency_row(name: str, summary: dict[str, float | None]) -> list[str]:
    return [name, *(_ms(summary.get(k)) for k in SUMMARY_KEYS)]


def _broker_line(b: dict[str, Any]) -> str:
    """One broker's share: CPU and RSS (by pid), produce/fetch/WAL bytes and S3 PUTs (its own counters)."""
    parts = [f"broker {b['id'] if b.get('id') is not None else '?'}" + (f" ({b['zone']})" if b.get("zone") else "")]
    if b.get("pid") is not None:
        parts.append(f"CPU {b['cpu_percent']:.0f}%, peak RSS {human_bytes(b['rss_peak_bytes'])}")
    for key, label in (("produce_bytes", "produce"), ("fetch_bytes", "fetch"), ("wal_bytes_written", "WAL")):
        if key in b:
            parts.append(f"{label} {human_bytes(b[key])}")
    if "s3_put_requests" in b:
        parts.append(f"S3 PUT {b['s3_put_requests']}")
    return ": ".join([parts[0], ", ".join(parts[1:]) or "no figures"])


def render_summary(result: dict[str, Any], console: Console) -> None:
    """The final summary: throughput, latency percentiles, catch-up, cluster, errors."""
    w = result["workload"]
    prod, cons = result["produce"], result["consume"]
    rate = "unlimited" if not w["producerRate"] else f"{w['producerRate']:,.0f} msg/s"
    console.print(
        f"[bold]amq perf[/bold] {w['name']} on {result['bootstrap']}: {w['topics']} topic(s) x "
        f"{w['partitionsPerTopic']} partitions, {w['messageSize']} B records, target {rate}, "
        f"{w['producersPerTopic']} producer(s)/topic, {w['subscriptionsPerTopic']} subscription(s) x "
        f"{w['consumerPerSubscription']} consumer(s); measured {result['duration_s']:.1f}s",
        soft_wrap=True,
    )
    thr = Table(title="Throughput (measured window)", title_justify="left", box=None, header_style="bold")
    for col in ("", "msg/s", "MiB/s", "records", "bytes", "errors"):
        thr.add_column(col, justify="right" if col else "left")
    thr.add_row(
        "produce",
        _num(prod["msg_per_s"]),
        f"{prod['mib_per_s']:.2f}",
        _num(prod["messages"]),
        human_bytes(prod["bytes"]),
        str(prod["errors"]),
    )
    thr.add_row(
        "consume",
        _num(cons["msg_per_s"]),
        f"{cons['mib_per_s']:.2f}",
        _num(cons["messages"]),
        human_bytes(cons["bytes"]),
        str(cons["errors"]),
    )
    console.print(thr)
    lat = Table(title="Latency (ms, measured window)", title_justify="left", box=None, header_style="bold")
    lat.add_column("")
    for key in SUMMARY_KEYS:
        lat.add_column({"p999": "p99.9"}.get(key, key), justify="right")
    lat.add_row(*_latency_row("publish", result["publish_latency_ms"]))
    lat.add_row(*_latency_row("end-to-end", result["e2e_latency_ms"]))
    console.print(lat)
    cu = result.get("catch_up")
    if cu:
        console.print(
            f"catch-up: backlog {human_bytes(cu['backlog_bytes'])} ({_num(cu['backlog_messages'])} records) "
            f"built in {cu['build_s']:.1f}s, read in {cu['catch_up_s']:.1f}s "
            f"at {cu['read_mib_per_s']:.2f} MiB/s "
            f"({_num(cu['read_msg_per_s'])} msg/s){'' if cu['caught_up'] else ' (did NOT catch up)'}"
        )
        cl = Table(title="Publish latency around catch-up (ms)", title_justify="left", box=None, header_style="bold")
        cl.add_column("")
        for key in SUMMARY_KEYS:
            cl.add_column({"p999": "p99.9"}.get(key, key), justify="right")
        cl.add_row(*_latency_row("before (backlog build)", cu["publish_latency_ms_before"]))
        cl.add_row(*_latency_row("during catch-up", cu["publish_latency_ms_during"]))
        console.print(cl)
    subs = cons["per_subscription"]
    mismatched = [s for s in subs if s["unique"] != s["expected"]]
    dupes = sum(s["duplicates"] for s in subs)
    console.print(
        f"delivery: {_num(prod['total_messages'])} records acknowledged; "
        + (
            f"every subscription ({len(subs)}) received all of them"
            if not mismatched
            else f"{len(mismatched)} of {len(subs)} subscription(s) did not receive all of them"
        )
        + (f"; {dupes} re-delivered" if dupes else "")
    )
    cluster = result.get("cluster") or {}
    if cluster.get("metrics_available"):
        s3 = cluster["s3"]
        console.print(
            f"cluster: S3 PUT {s3['put']} ({human_bytes(s3['put_bytes'])}), GET {s3['get']} "
            f"({human_bytes(s3['get_bytes'])}), LIST {s3['list']}, DELETE {s3['delete']}; "
            f"WAL written {human_bytes(cluster['wal_bytes_written'])}; "
            f"cross-zone {human_bytes(cluster['cross_zone_bytes'])}"
            + (f" ({cluster['cross_zone_percent']:.1f} % of data bytes between known zones)"
               if cluster.get("cross_zone_percent") is not None else "")
            + (f", plus {human_bytes(cluster['cross_zone_pointer_bytes'])} of zone-router pointers"
               if cluster.get("cross_zone_pointer_bytes") else "")
        )  # fmt: skip
    else:
        console.print(f"cluster: {cluster.get('note', 'no metrics')}")
    per_broker = cluster.get("per_broker") or []
    if "broker_cpu_percent" in cluster:
        many = len(per_broker) > 1
        total = cluster.get("broker_rss_total_bytes")
        console.print(
            f"brokers: CPU {cluster['broker_cpu_percent']:.0f}% ({'sum over brokers, ' if many else ''}"
            f"100% = one core), peak RSS {human_bytes(cluster['broker_rss_bytes'])} (largest broker)"
            + (f", {human_bytes(total)} (all brokers together)" if many and total else "")
        )
    if len(per_broker) > 1:
        for b in per_broker:
            console.print(f"  {_broker_line(b)}")
    for warning in cluster.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for side in ("produce", "consume"):
        if result[side]["errors"] and result[side].get("last_error"):
            console.print(f"[red]{side} errors:[/red] {result[side]['errors']}, last: {result[side]['last_error']}")
