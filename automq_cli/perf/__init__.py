"""`amq perf`: OpenMessaging-Benchmark-style performance runs (see docs/perf.md)."""

from automq_cli.perf.cli import app

__all__ = ["app"]
