"""The broker's one typed configuration: defaults, YAML/JSON loading, Kafka names for DescribeConfigs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.storage.config import StorageConfig, WalConfig
from engine.storage.objects.store import ObjectStoreConfig


class BrokerConfigError(ValueError):
    pass


@dataclass
class S3Settings:
    endpoint: str = ""
    bucket: str = "amq"
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    prefix: str = ""

    def object_store(self) -> ObjectStoreConfig:
        return ObjectStoreConfig(
            endpoint=self.endpoint,
            bucket=self.bucket,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            prefix=self.prefix,
        )


@dataclass
class BrokerConfig:
    node_id: int = 0
    zone: str = "az1"
    #: Address the listener binds; also what Metadata advertises unless advertised_host is set.
    host: str = "127.0.0.1"
    port: int = 9092  # 0 = any free port
    advertised_host: str = ""
    #: The port clients and other brokers reach this broker at, when not the bound one (NAT,
    #: port mappings); 0 = the bound port.
    advertised_port: int = 0
    #: host:port of the controller's RPC; `h1:p1,h2:p2` for controllers that fail over (PostgreSQL).
    controller: str = "127.0.0.1:9093"
    #: Port of the HTTP metrics endpoint (GET /metrics); 0 = any free port, -1 = off.
    metrics_port: int = 0
    #: Directory for this broker's files (WAL, storage metadata unless storage_metadata_path is set).
    data_dir: str = ""
    #: Storage metadata: an SQLite file (default: data_dir/metadata.db) or a postgresql:// URL.
    storage_metadata_path: str = ""
    auto_create_topics_enable: bool = True
    num_partitions: int = 1
    default_replication_factor: int = 1
    offsets_topic_num_partitions: int = 50
    message_max_bytes: int = 1048588
    socket_request_max_bytes: int = 100 * 1024 * 1024
    heartbeat_interval_ms: int = 1000
    #: How often a heartbeat carries the per-partition traffic the auto-balancer plans with.
    load_report_interval_ms: int = 5000
    #: After a controlled shutdown moved its partitions, the listener stays up this long for metadata requests.
    shutdown_grace_ms: int = 300
    #: Producer ids are taken from the controller in blocks of this size.
    producer_id_block: int = 1000
    #: Retention of topics that do not set retention.ms / retention.bytes (Kafka's log.retention.*).
    log_retention_ms: int = 604800000
    log_retention_bytes: int = -1
    #: Clients talk to brokers of their own zone; data reaches leaders in other zones through
    #: shared storage (docs/zones.md). Acted on with the `nfs` and `s3` WALs only.
    zone_router: bool = True
    #: Simulated latency (ms each way) of links between zones: requests of clients in another zone
    #: and broker-to-broker messages to another zone wait twice this long (local trials only).
    zone_latency_ms: int = 0
    s3: S3Settings = field(default_factory=S3Settings)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def advertised(self) -> str:
        return self.advertised_host or self.host

    @property
    def metadata_path(self) -> str:
        """The storage metadata's SQLite file or PostgreSQL URL."""
        if self.storage_metadata_path:
            return self.storage_metadata_path
        return str(Path(self.data_dir or ".") / "metadata.db")

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BrokerConfig:
        raw = {str(k).replace(".", "_").replace("-", "_"): v for k, v in raw.items()}
        check_fields(cls, raw, "broker settings")
        s3 = raw.pop("s3", None) or {}
        storage = raw.pop("storage", None) or {}
        if not isinstance(s3, dict) or not isinstance(storage, dict):
            raise BrokerConfigError("s3 and storage must be mappings of settings")
        storage = dict(storage)
        wal = storage.pop("wal", None) or {}
        if not isinstance(wal, dict):
            raise BrokerConfigError("storage.wal must be a mapping of settings")
        check_fields(S3Settings, s3, "s3 settings")
        check_fields(StorageConfig, storage, "storage settings")
        check_fields(WalConfig, wal, "storage.wal settings")
        try:
            cfg = cls(**raw, s3=S3Settings(**s3), storage=StorageConfig(wal=WalConfig(**wal), **storage))
        except TypeError as e:
            raise BrokerConfigError(f"bad broker settings: {e}") from None
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> BrokerConfig:
        return cls.from_dict(cls.load_raw(path))

    @staticmethod
    def load_raw(path: str | Path) -> dict[str, Any]:
        """The file's settings, not yet checked (`amq broker start` lays its flags over them)."""
        text = Path(path).read_text()
        try:
            data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            kind = "JSON" if str(path).endswith(".json") else "YAML"
            first = " ".join(line.strip() for line in str(e).splitlines()) or type(e).__name__
            raise BrokerConfigError(f"{path}: not valid {kind}: {first}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise BrokerConfigError(f"{path}: expected a mapping of settings")
        return data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def validate(self) -> None:
        if self.num_partitions < 1:
            raise BrokerConfigError(f"num_partitions must be at least 1, got {self.num_partitions}")
        if self.default_replication_factor < 1:
            raise BrokerConfigError("default_replication_factor must be at least 1")
        if self.offsets_topic_num_partitions < 1:
            raise BrokerConfigError("offsets_topic_num_partitions must be at least 1")
        if not 0 <= self.port <= 65535:
            raise BrokerConfigError(f"port {self.port} is not a TCP port")
        if self.storage.wal.kind not in ("file", "nfs", "s3"):
            raise BrokerConfigError(f"storage.wal.kind must be file, nfs or s3, not {self.storage.wal.kind!r}")
        if not 0 <= self.advertised_port <= 65535:
            raise BrokerConfigError(f"advertised_port {self.advertised_port} is not a TCP port")
        from engine.controller.rpc import parse_addresses

        try:
            parse_addresses(self.controller)
        except ValueError as e:
            raise BrokerConfigError(f"controller: {e} (expected host:port[,host:port...])") from None

    # --- as Kafka names them (DescribeConfigs on the broker resource) ---------------------------

    def kafka_configs(self, bound_port: int) -> dict[str, tuple[str, int]]:
        """name -> (value, DescribeConfigs config_type)."""
        listener = f"PLAINTEXT://{self.host}:{bound_port}"
        advertised_port = self.advertised_port or bound_port
        return {
            "broker.id": (str(self.node_id), 3),
            "broker.rack": (self.zone, 2),
            "listeners": (listener, 7),
            "advertised.listeners": (f"PLAINTEXT://{self.advertised}:{advertised_port}", 7),
            "auto.create.topics.enable": (str(self.auto_create_topics_enable).lower(), 1),
            "num.partitions": (str(self.num_partitions), 3),
            "default.replication.factor": (str(self.default_replication_factor), 3),
            "offsets.topic.num.partitions": (str(self.offsets_topic_num_partitions), 3),
            "message.max.bytes": (str(self.message_max_bytes), 3),
            "socket.request.max.bytes": (str(self.socket_request_max_bytes), 3),
            "log.message.timestamp.type": ("CreateTime", 2),
            "min.insync.replicas": ("1", 3),
            "delete.topic.enable": ("true", 1),
            "log.retention.ms": (str(self.log_retention_ms), 5),
            "log.retention.bytes": (str(self.log_retention_bytes), 5),
            "wal.kind": (self.storage.wal.kind, 2),
        }


_SCALARS: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def check_fields(cls: type, raw: dict[str, Any], what: str) -> None:
    """Unknown keys and values of the wrong type, in one line (the dataclass would take anything)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BrokerConfigError(f"unknown {what}: {', '.join(unknown)}")
    for name, value in raw.items():
        kind = fields[name]
        if kind == "WalKind":
            kind = "str"
        want = _SCALARS.get(kind)
        # bool is an int in Python: `port: true` must not pass as port 1.
        if want is not None and (not isinstance(value, want) or (kind != "bool" and isinstance(value, bool))):
            noun = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}[kind]
            raise BrokerConfigError(f"{what}: {name} must be {noun}, not {value!r}")
