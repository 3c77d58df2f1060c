"""The PNG chart of a run: throughput and latency percentiles over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automq_cli.perf.errors import PerfError

_PHASE_COLORS = {"warmup": "#eeeeee", "backlog": "#fde2c8", "catch-up": "#d8ecd2", "drain": "#e6e0f3"}


def require_matplotlib() -> None:
    """Fail before the run, not after it, when the chart cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PerfError("--chart-out needs matplotlib; install it with `pip install matplotlib`") from None


def write_chart(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot's import
    import matplotlib.pyplot as plt

    rows = result["intervals"]
    interval = result.get("interval_s", 1.0)
    # Each value covers the interval ending at its t: draw it as a step from the
    # interval's start, repeating the last value so the last interval shows too.
    t = [r["t"] - interval for r in rows] + ([rows[-1]["t"]] if rows else [])

    def steps(values: list[float]) -> list[float]:
        return values + values[-1:]

    fig, (ax_thr, ax_lat) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    w = result["workload"]
    fig.suptitle(
        f"amq perf: {w['name']} on {result['bootstrap']} "
        f"({w['messageSize']} B records, {w['topics']}x{w['partitionsPerTopic']} partitions)",
        fontsize=11,
    )
    step = {"drawstyle": "steps-post"}
    ax_thr.plot(
        t, steps([r["produce_mib_per_s"] for r in rows]), label="produce MiB/s", color="tab:blue", **step
    )
    ax_thr.plot(
        t, steps([r["consume_mib_per_s"] for r in rows]), label="consume MiB/s", color="tab:green", **step
    )
    ax_thr.set_ylabel("MiB/s")
    ax_thr.grid(alpha=0.3)
    ax_thr.legend(loc="lower right", fontsize=8)

    def series(side: str, key: str) -> list[float]:
        return steps([r[side][key] if r[side][key] is not None else float("nan") for r in rows])

    for side, label, color in (
        ("publish_latency_ms", "publish", "tab:orange"),
        ("e2e_latency_ms", "e2e", "tab:red"),
    ):
        ax_lat.plot(t, series(side, "p50"), label=f"{label} p50", color=color, linestyle="--", **step)
        ax_lat.plot(t, series(side, "p99"), label=f"{label} p99", color=color, **step)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, log)")
    ax_lat.set_xlabel("seconds since producers started")
    ax_lat.grid(alpha=0.3, which="both")
    ax_lat.legend(loc="lower right", fontsize=8)

    # Shade each phase that is not the measured window, so it is clear what the summary covers.
    for phase in result.get("phases", []):
        color = _PHASE_COLORS.get(phase["name"])
        if color is None:
            continue
        start = phase["start_s"]
        end = start + max(phase["duration_s"], interval)
        for ax in (ax_thr, ax_lat):
            ax.axvspan(start, end, color=color, alpha=0.6, lw=0)
        ax_thr.annotate(
            phase["name"], xy=(start, 1.01), xycoords=("data", "axes fraction"), fontsize=7, va="bottom"
        )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise PerfError(f"cannot write the chart to {str(path)!r}: {exc.strerror}") from None
    finally:
        plt.close(fig)
