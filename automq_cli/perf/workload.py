"""OpenMessaging-Benchmark (OMB) workload files, plus the Kafka driver's client blocks.

A workload file uses OMB's camelCase keys so files written for OMB run here
unchanged; the driver-level `producerConfig` / `consumerConfig` /
`topicConfig` / `commonConfig` blocks may sit in the same file, either as
mappings or as OMB's `key=value` property text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automq_cli.perf.errors import PerfError

# Smallest record that can carry the 8-byte send timestamp used for end-to-end latency.
MIN_RECORD_SIZE = 8

# OMB keys whose meaning this tool does not reproduce: accepted (so OMB files
# load) with a warning, instead of failing like a typo would.
IGNORED_OMB_KEYS = frozenset(
    {"useRandomizedPayloads", "randomBytesRatio", "randomizedPayloadPoolSize", "backlogDrainRatio"}
)
KEY_DISTRIBUTORS = ("NO_KEY", "KEY_ROUND_ROBIN", "RANDOM_NANO")


@dataclass
class Workload:
    """One run's shape. Field names are Pythonic; `to_omb()` gives the OMB spelling back."""

    name: str = "ad-hoc"
    description: str = ""
    topics: int = 1
    partitions_per_topic: int = 16
    message_size: int = 1024
    payload_file: str | None = None
    key_distributor: str = "NO_KEY"
    subscriptions_per_topic: int = 1
    consumer_per_subscription: int = 1
    producers_per_topic: int = 1
    producer_rate: float = 10_000.0  # messages/s over all producers; 0 means unlimited
    consumer_backlog_size_bytes: int = 0  # > 0 turns on catch-up mode
    test_duration_s: float = 30.0
    warmup_duration_s: float = 5.0
    replication_factor: int = 1
    common_config: dict[str, str] = field(default_factory=dict)
    producer_config: dict[str, str] = field(default_factory=dict)
    consumer_config: dict[str, str] = field(default_factory=dict)
    topic_config: dict[str, str] = field(default_factory=dict)

    @property
    def catch_up(self) -> bool:
        return self.consumer_backlog_size_bytes > 0

    def validate(self) -> None:
        """Reject shapes that cannot run, with the one line the user needs to fix them."""
        positive = {
            "topics": self.topics,
            "partitionsPerTopic": self.partitions_per_topic,
            "producersPerTopic": self.producers_per_topic,
            "replicationFactor": self.replication_factor,
        }
        for key, value in positive.items():
            if value < 1:
                raise PerfError(f"{key} must be at least 1 (got {value})")
        for key, value in {
            "subscriptionsPerTopic": self.subscriptions_per_topic,
            "consumerPerSubscription": self.consumer_per_subscription,
        }.items():
            if value < 1:
                raise PerfError(
                    f"{key} must be at least 1 (got {value}); end-to-end latency needs a consumer"
                )
        if self.producer_rate < 0:
            raise PerfError(
                f"the producer rate must be >= 0 messages/s, 0 meaning unlimited (got {self.producer_rate:g})"
            )
        if self.test_duration_s <= 0:
            raise PerfError(f"the test duration must be positive (got {self.test_duration_s:g}s)")
        if self.warmup_duration_s < 0:
            raise PerfError(f"the warmup duration cannot be negative (got {self.warmup_duration_s:g}s)")
        if self.message_size < MIN_RECORD_SIZE:
            raise PerfError(
                f"the record size must be at least {MIN_RECORD_SIZE} bytes to carry the send timestamp "
                f"(got {self.message_size})"
            )
        if self.consumer_backlog_size_bytes < 0:
            raise PerfError("the backlog size cannot be negative")
        if self.key_distributor not in KEY_DISTRIBUTORS:
            raise PerfError(
                f"keyDistributor must be one of {', '.join(KEY_DISTRIBUTORS)} (got {self.key_distributor!r})"
            )

    def to_omb(self) -> dict[str, Any]:
        """The effective workload in OMB spelling, as recorded in the JSON result."""
        return {
            "name": self.name,
            "description": self.description,
            "topics": self.topics,
            "partitionsPerTopic": self.partitions_per_topic,
            "messageSize": self.message_size,
            "payloadFile": self.payload_file,
            "keyDistributor": self.key_distributor,
            "subscriptionsPerTopic": self.subscriptions_per_topic,
            "consumerPerSubscription": self.consumer_per_subscription,
            "producersPerTopic": self.producers_per_topic,
            "producerRate": self.producer_rate,
            "consumerBacklogSizeGB": self.consumer_backlog_size_bytes / 1024**3,
            "testDurationMinutes": self.test_duration_s / 60,
            "warmupDurationMinutes": self.warmup_duration_s / 60,
            "replicationFactor": self.replication_factor,
            "commonConfig": dict(self.common_config),
            "producerConfig": dict(self.producer_config),
            "consumerConfig": dict(self.consumer_config),
            "topicConfig": dict(self.topic_config),
        }

    def replace(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)


def _properties(value: Any, key: str) -> dict[str, str]:
    """A client-config block as a mapping or as OMB's `key=value` lines."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): config_value(v) for k, v in value.items()}
    if isinstance(value, str):
        out: dict[str, str] = {}
        for raw in value.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise PerfError(f"{key}: expected key=value, got {line!r}")
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
        return out
    raise PerfError(f"{key} must be a mapping or key=value lines, not {type(value).__name__}")


def config_value(value: Any) -> str:
    # librdkafka wants strings; YAML's booleans must become its lower-case spelling.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PerfError(f"workload key {key} must be a number (got {value!r})")
    if kind is int:
        if float(value) != int(value):
            raise PerfError(f"workload key {key} must be a whole number (got {value!r})")
        return int(value)
    return float(value)


_KNOWN_KEYS = frozenset(
    {
        "name",
        "description",
        "topics",
        "partitionsPerTopic",
        "messageSize",
        "payloadFile",
        "keyDistributor",
        "subscriptionsPerTopic",
        "consumerPerSubscription",
        "producersPerTopic",
        "producerRate",
        "consumerBacklogSizeGB",
        "testDurationMinutes",
        "warmupDurationMinutes",
        "replicationFactor",
        "commonConfig",
        "producerConfig",
        "consumerConfig",
        "topicConfig",
    }
)


def parse_workload(
    data: Any, source: str = "workload", base_dir: Path | None = None
) -> tuple[Workload, list[str]]:
    """Build a Workload from a parsed YAML mapping; returns it and any warnings."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PerfError(f"{source}: expected a mapping of workload keys, got {type(data).__name__}")
    warnings: list[str] = []
    for key in data:
        if key in IGNORED_OMB_KEYS:
            warnings.append(f"{source}: OMB key {key} is not supported by amq perf and is ignored")
        elif key not in _KNOWN_KEYS:
            raise PerfError(
                f"{source}: unknown workload key {key!r} (known: {', '.join(sorted(_KNOWN_KEYS))})"
            )
    d = Workload()
    payload_file = data.get("payloadFile")
    if payload_file is not None:
        path = Path(str(payload_file)).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        payload_file = str(path)
    workload = Workload(
        name=str(data.get("name") or (Path(source).stem if source != "workload" else d.name)),
        description=str(data.get("description") or ""),
        topics=_number(data, "topics", int, d.topics),
        partitions_per_topic=_number(data, "partitionsPerTopic", int, d.partitions_per_topic),
        message_size=_number(data, "messageSize", int, d.message_size),
        payload_file=payload_file,
        key_distributor=str(data.get("keyDistributor") or d.key_distributor),
        subscriptions_per_topic=_number(data, "subscriptionsPerTopic", int, d.subscriptions_per_topic),
        consumer_per_subscription=_number(data, "consumerPerSubscription", int, d.consumer_per_subscription),
        producers_per_topic=_number(data, "producersPerTopic", int, d.producers_per_topic),
        producer_rate=_number(data, "producerRate", float, d.producer_rate),
        consumer_backlog_size_bytes=int(_number(data, "consumerBacklogSizeGB", float, 0.0) * 1024**3),
        test_duration_s=_number(data, "testDurationMinutes", float, d.test_duration_s / 60) * 60,
        warmup_duration_s=_number(data, "warmupDurationMinutes", float, d.warmup_duration_s / 60) * 60,
        replication_factor=_number(data, "replicationFactor", int, d.replication_factor),
        common_config=_properties(data.get("commonConfig"), "commonConfig"),
        producer_config=_properties(data.get("producerConfig"), "producerConfig"),
        consumer_config=_properties(data.get("consumerConfig"), "consumerConfig"),
        topic_config=_properties(data.get("topicConfig"), "topicConfig"),
    )
    return workload, warnings


def load_workload(path: str | Path) -> tuple[Workload, list[str]]:
    """Read a workload YAML file; every failure becomes a one-line PerfError."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise PerfError(f"workload file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise PerfError(f"workload file {str(p)!r} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PerfError(f"cannot read workload file {str(p)!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PerfError(f"workload file {str(p)!r} is not valid YAML{where}: {problem}") from None
    return parse_workload(data, source=str(p), base_dir=p.parent)


def load_payload(workload: Workload) -> bytes:
    """The record body: the payload file's bytes (repeated/truncated to the size) or random bytes."""
    size = workload.message_size
    if workload.payload_file:
        try:
            data = Path(workload.payload_file).read_bytes()
        except OSError as exc:
            raise PerfError(f"cannot read payloadFile {workload.payload_file!r}: {exc.strerror}") from None
        if not data:
            raise PerfError(f"payloadFile {workload.payload_file!r} is empty")
        return (data * (size // len(data) + 1))[:size]
    import os

    # Random bytes, so compression (if a user turns it on) does not flatter the figures.
    return os.urandom(size)
