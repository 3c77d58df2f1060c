"""The controller's RPC calls as typed messages, and the broker record both sides share.

Each call is a request struct naming its method and its response type; the server
decodes `params` into the request type (a malformed call is refused as BAD_REQUEST
before any handler runs) and the client decodes the result into the response type.
Topic specs inside the topic calls stay loose mappings on purpose: the controller
answers a bad spec with a Kafka error code for that topic, not a refused call.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Literal, TypeVar

import msgspec

BrokerState = Literal["starting", "running", "fenced", "shutdown"]
TakeoverState = Literal["pending", "waiting"]


class WalSpec(msgspec.Struct, frozen=True):
    """Where a broker's WAL lives, so that another broker can open it after a failure."""

    kind: str = "file"
    path: str = ""
    wal_id: str = ""


class BrokerRecord(msgspec.Struct):
    """A broker as the controller knows it; brokers keep the same record in their metadata image.

    `starting`: registered, recovering its WAL, not given partitions yet. `running`: alive.
    `fenced`: missed its heartbeats (its epoch was bumped). `shutdown`: handed its partitions off and left.
    """

    id: int
    zone: str
    host: str
    port: int
    epoch: int
    state: BrokerState = "running"
    wal: WalSpec = WalSpec()
    #: Wall-clock seconds when `state` last changed.
    since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.state == "running"


class WalTakeover(msgspec.Struct):
    """A dead broker's WAL that a survivor must upload before that broker's partitions reopen.

    `pending`: `to_broker` is doing it. `waiting`: nobody can (a `file` WAL whose zone has no
    live broker); the partitions wait for the broker to come back.
    """

    id: int
    wal_id: str
    from_broker: int
    wal: WalSpec
    to_broker: int = -1
    state: TakeoverState = "pending"
    reason: str = ""
    #: stream id -> the epoch the dead broker held it at: fenced (epoch + 1) before the WAL is read.
    streams: dict[int, int] = {}


R = TypeVar("R")


class Request(msgspec.Struct, Generic[R]):
    method: ClassVar[str]
    response: ClassVar[type[Any]]
    #: A broker's session call: the connection it came on is that broker's (see rpc.serve_connection).
    session: ClassVar[bool] = False


class VersionResult(msgspec.Struct):
    """The metadata version that includes a call's change; callers wait for their image to reach it."""

    version: int


class PingResult(msgspec.Struct):
    cluster_id: str
    version: int


class RegisterResult(msgspec.Struct):
    broker_epoch: int
    cluster_id: str
    version: int
    #: A survivor is uploading this broker's WAL: it must not recover the WAL itself until that is done.
    wal_taken_over: bool = False


class HeartbeatResult(msgspec.Struct):
    version: int
    state: str


class ShutdownResult(msgspec.Struct):
    version: int
    moved: int


class MetadataChanges(msgspec.Struct, omit_defaults=True):
    """Records after `since`, or a whole snapshot when the follower is too far behind."""

    version: int
    snapshot: dict[str, Any] | None = None
    records: list[dict[str, Any]] | None = None


class TopicResults(msgspec.Struct):
    """Per-topic outcomes: {name, error_code, error_message, ...} in request order."""

    results: list[dict[str, Any]]
    version: int


class ProducerIds(msgspec.Struct):
    first: int
    count: int


class BrokerStatus(msgspec.Struct):
    id: int
    zone: str
    host: str
    port: int
    epoch: int
    alive: bool
    state: str
    partitions_led: int
    wal: WalSpec


class StatusResult(msgspec.Struct):
    cluster_id: str
    version: int
    session_timeout_ms: int
    brokers: list[BrokerStatus]
    topics: int
    internal_topics: int
    partitions: int
    offline_partitions: int
    wal_takeovers: list[WalTakeover]


class Ping(Request[PingResult]):
    method = "ping"
    response = PingResult


class RegisterBroker(Request[RegisterResult]):
    """A broker (re)joins as a new incarnation; it stays `starting` until BrokerReady."""

    method = "register_broker"
    response = RegisterResult
    session = True
    broker_id: int
    zone: str
    host: str
    port: int
    wal: WalSpec = WalSpec()


class BrokerReady(Request[VersionResult]):
    method = "broker_ready"
    response = VersionResult
    broker_id: int
    broker_epoch: int


class Heartbeat(Request[HeartbeatResult]):
    method = "heartbeat"
    response = HeartbeatResult
    session = True
    broker_id: int
    broker_epoch: int


class ControlledShutdown(Request[ShutdownResult]):
    """The broker has uploaded its WAL and takes no more appends: move its partitions away."""

    method = "controlled_shutdown"
    response = ShutdownResult
    broker_id: int
    broker_epoch: int


class ClusterShutdown(Request[VersionResult]):
    """`amq cluster down`: brokers that stop now keep their partitions and lead them again on start."""

    method = "cluster_shutdown"
    response = VersionResult


class WalTakenOver(Request[VersionResult]):
    """A survivor uploaded a dead broker's WAL; `stream_epochs` are the epochs it opened streams at."""

    method = "wal_taken_over"
    response = VersionResult
    broker_id: int
    broker_epoch: int
    takeover_id: int
    stream_epochs: dict[int, int] = {}
    records: int = 0


class Metadata(Request[MetadataChanges]):
    method = "metadata"
    response = MetadataChanges
    since: int = 0
    wait_ms: int = 0
    #: The asking broker, if a broker: the controller then knows which version it has applied.
    broker_id: int = -1


class CreateTopics(Request[TopicResults]):
    method = "create_topics"
    response = TopicResults
    topics: list[dict[str, Any]]
    validate_only: bool = False
    internal: bool = False


class DeleteTopics(Request[TopicResults]):
    method = "delete_topics"
    response = TopicResults
    names: list[str]


class CreatePartitions(Request[TopicResults]):
    method = "create_partitions"
    response = TopicResults
    topics: list[dict[str, Any]]
    validate_only: bool = False


class AlterConfigs(Request[TopicResults]):
    method = "alter_configs"
    response = TopicResults
    resources: list[dict[str, Any]]
    incremental: bool = False
    validate_only: bool = False


class AllocProducerIds(Request[ProducerIds]):
    method = "alloc_producer_ids"
    response = ProducerIds
    broker_id: int = -1
    count: int = 1000


class Status(Request[StatusResult]):
    method = "status"
    response = StatusResult


REQUESTS: dict[str, type[Request[Any]]] = {
    cls.method: cls
    for cls in (
        Ping, RegisterBroker, BrokerReady, Heartbeat, ControlledShutdown, ClusterShutdown, WalTakenOver, Metadata,
        CreateTopics, DeleteTopics, CreatePartitions, AlterConfigs, AllocProducerIds, Status,
    )
}  # fmt: skip
