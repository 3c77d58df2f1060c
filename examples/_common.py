"""Shared by the examples: command line and the local cluster's bootstrap address."""

from __future__ import annotations

import argparse
import uuid

FALLBACK = "127.0.0.1:9092"


def default_bootstrap() -> str:
    """The local cluster's address from `$AMQ_HOME/cluster.json`, else Kafka's usual port."""
    try:
        # The amq package knows the state file's format; the examples must also run without it.
        from automq_cli.perf.errors import PerfError
        from automq_cli.perf.target import load_cluster_state
    except ImportError:
        return FALLBACK
    try:
        return load_cluster_state().bootstrap
    except PerfError:
        return FALLBACK


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", default=None, help="host:port (default: the local amq cluster, else 127.0.0.1:9092)")
    p.add_argument("--topic", default=None, help="topic to use (default: a new, uniquely named one)")
    p.add_argument("--count", "-n", type=int, default=100, help="records to produce and consume back")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every record to come back")
    args = p.parse_args()
    args.bootstrap = args.bootstrap or default_bootstrap()
    # A fresh topic and group per run, so earlier runs' records and offsets do not count.
    suffix = uuid.uuid4().hex[:8]
    args.topic = args.topic or f"example-{suffix}"
    args.group = f"example-group-{suffix}"
    return args


def record(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of record i; the consumer checks it gets exactly these back."""
    return f"key-{i}".encode(), f"value-{i}".encode(), [("seq", str(i).encode()), ("source", b"amq-example")]
