"""Topic names and topic configs: Kafka's rules, Kafka's error codes.

Shared by the controller (which validates) and the broker (which describes).
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.protocol.errors import ErrorCode

MAX_TOPIC_NAME = 249
_LEGAL = re.compile(r"^[a-zA-Z0-9._-]+$")
INTERNAL_PREFIX = "__"
OFFSETS_TOPIC = "__consumer_offsets"


class ConfigError(ValueError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def validate_topic_name(name: str | None) -> None:
    """Kafka's Topic.validate: 1-249 chars of [a-zA-Z0-9._-], not "." or ".."."""
    if not name:
        raise ConfigError(ErrorCode.INVALID_TOPIC_EXCEPTION, "topic name is empty")
    if name in (".", ".."):
        raise ConfigError(ErrorCode.INVALID_TOPIC_EXCEPTION, f"topic name cannot be {name!r}")
    if len(name) > MAX_TOPIC_NAME:
        raise ConfigError(
            ErrorCode.INVALID_TOPIC_EXCEPTION, f"topic name is {len(name)} characters, the limit is {MAX_TOPIC_NAME}"
        )
    if not _LEGAL.match(name):
        raise ConfigError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name {name!r} is illegal: only ASCII alphanumerics, '.', '_' and '-' are allowed",
        )


def collision_key(name: str) -> str:
    """Kafka refuses topics that differ only by '.' vs '_' (metric names would collide)."""
    return name.replace(".", "_")


def is_internal(name: str) -> bool:
    return name.startswith(INTERNAL_PREFIX)


# --- config definitions ------------------------------------------------------------------

# DescribeConfigs config_type values.
BOOLEAN, STRING, INT, SHORT, LONG, DOUBLE, LIST = 1, 2, 3, 4, 5, 6, 7
_TYPE_NAMES = {BOOLEAN: "boolean", STRING: "string", INT: "int", SHORT: "short", LONG: "long", DOUBLE: "double"}
INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1


@dataclass(frozen=True)
class ConfigDef:
    name: str
    type: int
    default: str | None
    doc: str
    #: Extra check on the parsed value; returns an error message or None.
    check: Callable[[str], str | None] | None = None
    #: Whether the broker acts on it. The rest are accepted (Kafka clients set some of them, and
    #: refusing would break them), stored, and described as having no effect.
    enforced: bool = False

    @property
    def documentation(self) -> str:
        """What DescribeConfigs and `amq topic describe` say about it."""
        if self.enforced:
            return self.doc
        note = "Accepted for compatibility; amq does not act on it."
        return f"{note} {self.doc}" if self.doc else note


def _at_least(lo: int) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if int(v) >= lo else f"must be at least {lo}"

    return check


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _cleanup(v: str) -> str | None:
    parts = [p.strip() for p in v.split(",")]
    if not parts or any(p not in ("delete", "compact") for p in parts):
        return "must be a list of delete, compact"
    return None


def _ratio(v: str) -> str | None:
    return None if 0.0 <= float(v) <= 1.0 else "must be between 0 and 1"


_DEFS = [
    ConfigDef("cleanup.policy", LIST, "delete",
              "delete: retention.ms/retention.bytes move the log start; compact: the latest record per key is kept",
              _cleanup, True),
    ConfigDef("compression.type", STRING, "producer",
              "batches are stored as the producer compressed them; other values are refused (no recompression)",
              lambda v: None if v == "producer" else "must be producer: batches are stored as the producer "
              "compressed them (no recompression)", True),
    ConfigDef("delete.retention.ms", LONG, "86400000", "how long a compacted topic keeps tombstones",
              _at_least(0), True),
    ConfigDef("file.delete.delay.ms", LONG, "60000", "", _at_least(0)),
    ConfigDef("flush.messages", LONG, str(LONG_MAX), "every append is durable in the WAL before it is acknowledged",
              _at_least(1)),
    ConfigDef("flush.ms", LONG, str(LONG_MAX), "", _at_least(0)),
    ConfigDef("index.interval.bytes", INT, "4096", "", _at_least(0)),
    ConfigDef("local.retention.bytes", LONG, "-2", "", _at_least(-2)),
    ConfigDef("local.retention.ms", LONG, "-2", "", _at_least(-2)),
    ConfigDef("max.compaction.lag.ms", LONG, str(LONG_MAX), "", _at_least(1)),
    ConfigDef("max.message.bytes", INT, "1048588", "largest record batch a produce may carry", _at_least(0), True),
    ConfigDef("message.downconversion.enable", BOOLEAN, "true", ""),
    ConfigDef("message.format.version", STRING, "3.0-IV1", ""),
    ConfigDef("message.timestamp.after.max.ms", LONG, str(LONG_MAX), "", _at_least(0)),
    ConfigDef("message.timestamp.before.max.ms", LONG, str(LONG_MAX), "", _at_least(0)),
    ConfigDef("message.timestamp.difference.max.ms", LONG, str(LONG_MAX), "", _at_least(0)),
    ConfigDef("message.timestamp.type", STRING, "CreateTime", "CreateTime or LogAppendTime",
              _one_of("CreateTime", "LogAppendTime"), True),
    ConfigDef("min.cleanable.dirty.ratio", DOUBLE, "0.5",
              "a compacted partition is cleaned once this share of its bytes was written since the last cleaning",
              _ratio, True),
    ConfigDef("min.compaction.lag.ms", LONG, "0", "", _at_least(0)),
    ConfigDef("min.insync.replicas", INT, "1", "one copy: the WAL, then S3", _at_least(1)),
    ConfigDef("preallocate", BOOLEAN, "false", ""),
    ConfigDef("remote.storage.enable", BOOLEAN, "false", ""),
    ConfigDef("retention.bytes", LONG, "-1",
              "bytes a partition keeps (whole uploads go, oldest first); -1: no limit; unset: log.retention.bytes",
              _at_least(-1), True),
    ConfigDef("retention.ms", LONG, "604800000",
              "how long data is kept, from its upload to S3; -1: for ever; unset: log.retention.ms",
              _at_least(-1), True),
    ConfigDef("segment.bytes", INT, "1073741824", "", _at_least(14)),
    ConfigDef("segment.index.bytes", INT, "10485760", "", _at_least(4)),
    ConfigDef("segment.jitter.ms", LONG, "0", "", _at_least(0)),
    ConfigDef("segment.ms", LONG, "604800000", "", _at_least(1)),
    ConfigDef("unclean.leader.election.enable", BOOLEAN, "false", ""),
    ConfigDef("follower.replication.throttled.replicas", LIST, "", ""),
    ConfigDef("leader.replication.throttled.replicas", LIST, "", ""),
]  # fmt: skip

TOPIC_CONFIGS: dict[str, ConfigDef] = {d.name: d for d in _DEFS}


def _parse(d: ConfigDef, value: str) -> str:
    """Normalised text of a valid value, or ValueError."""
    v = value.strip()
    if d.type == BOOLEAN:
        if v.lower() not in ("true", "false"):
            raise ValueError("must be true or false")
        v = v.lower()
    elif d.type in (INT, LONG, SHORT):
        n = int(v)
        limit = INT_MAX if d.type == INT else LONG_MAX
        if not -limit - 1 <= n <= limit:
            raise ValueError(f"is out of range for an {_TYPE_NAMES[d.type]}")
        v = str(n)
    elif d.type == DOUBLE:
        float(v)
    if d.check is not None:
        problem = d.check(v)
        if problem:
            raise ValueError(problem)
    return v


def validate_config(name: str, value: str | None) -> str:
    """A topic config value as stored, or ConfigError(INVALID_CONFIG)."""
    d = TOPIC_CONFIGS.get(name)
    if d is None:
        raise ConfigError(ErrorCode.INVALID_CONFIG, f"unknown topic config {name!r}")
    if value is None:
        raise ConfigError(ErrorCode.INVALID_CONFIG, f"topic config {name!r} needs a value")
    try:
        return _parse(d, value)
    except ValueError as e:
        msg = str(e) if str(e).startswith(("must", "is out")) else "is not a valid " + _TYPE_NAMES.get(d.type, "value")
        raise ConfigError(ErrorCode.INVALID_CONFIG, f"invalid value {value!r} for {name}: {msg}") from None


def validate_configs(configs: dict[str, str | None]) -> dict[str, str]:
    return {k: validate_config(k, v) for k, v in configs.items()}


# IncrementalAlterConfigs operations.
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3
OP_NAMES = {OP_SET: "set", OP_DELETE: "delete", OP_APPEND: "append", OP_SUBTRACT: "subtract"}


def apply_ops(current: dict[str, str], ops: list[dict[str, object]], incremental: bool) -> dict[str, str]:
    """The topic's configs after `ops` ({name, op, value}), validated; ConfigError otherwise."""
    out = dict(current) if incremental else {}
    for op in ops:
        name = str(op["name"])
        kind = str(op.get("op", "set"))
        value = op.get("value")
        d = TOPIC_CONFIGS.get(name)
        if d is None:
            raise ConfigError(ErrorCode.INVALID_CONFIG, f"unknown topic config {name!r}")
        if kind == "set":
            out[name] = validate_config(name, None if value is None else str(value))
        elif kind == "delete":
            out.pop(name, None)
        elif kind in ("append", "subtract"):
            if d.type != LIST:
                raise ConfigError(ErrorCode.INVALID_CONFIG, f"{name} is not a list: {kind} does not apply")
            base = out.get(name, d.default or "")
            items = [x for x in base.split(",") if x]
            extra = [x.strip() for x in str(value or "").split(",") if x.strip()]
            if kind == "append":
                items += [x for x in extra if x not in items]
            else:
                items = [x for x in items if x not in extra]
            out[name] = validate_config(name, ",".join(items))
        else:
            raise ConfigError(ErrorCode.INVALID_REQUEST, f"unknown config operation {kind!r}")
    return out


def unenforced() -> list[str]:
    """Topic configs that are accepted and described but have no effect (docs/broker.md lists them)."""
    return [d.name for d in _DEFS if not d.enforced]


def effective(configs: dict[str, str]) -> dict[str, str]:
    """Every topic config with its value: the topic's own, else the default."""
    out = {d.name: d.default or "" for d in _DEFS}
    out.update(configs)
    return out
