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


class ProducerSnapshot(msgspec.Struct, array_like=True):
    """A producer's last batches in a partition: what idempotence checks against."""

    producer_id: int
    epoch: int
    #: (first sequence, last sequence, base offset, log append time) of each remembered batch.
    batches: list[tuple[int, int, int, int]]


class PartitionSnapshot(msgspec.Struct):
    """What a leader knows beside its stream, handed to the next leader so that it does not
    scan the stream to rebuild it: the move then costs the same for any partition size."""

    topic: str
    partition: int
    stream_id: int
    #: The leader epoch of the leader that wrote it, and the stream end it covers.
    leader_epoch: int
    end_offset: int
    producers: list[ProducerSnapshot] = []
    #: Leader-epoch cache: (epoch, first offset written in it).
    epochs: list[tuple[int, int]] = []


MovePhase = Literal["releasing", "opening", "done", "cancelled", "failed"]


class MoveRecord(msgspec.Struct):
    """One partition move and when each step of it happened (wall-clock ms, per process).

    requested (controller) -> drained (old leader takes no appends) -> released (its WAL tail
    for the stream is in S3) -> moved (controller: new leader, epoch + 1) -> opened (new
    leader opened the stream) -> first_append (new leader acknowledged its first produce).
    """

    id: int
    topic: str
    partition: int
    source: int
    target: int
    state: MovePhase = "releasing"
    reason: str = ""
    #: Who asked: "reassign" (a user or admin client), "balancer", "scale-in".
    cause: str = "reassign"
    requested_ms: int = 0
    drained_ms: int = 0
    released_ms: int = 0
    moved_ms: int = 0
    opened_ms: int = 0
    first_append_ms: int = 0
    #: Bytes the old leader uploaded to make the stream's WAL tail visible (never the partition's size).
    uploaded_bytes: int = 0
    #: Whether the new leader opened from the old leader's snapshot (no scan of the stream).
    from_snapshot: bool = False


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
    #: Relay objects created before this (ms) are referenced by no WAL any more; -1: not known.
    relay_horizon_ms: int = -1


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
    bytes_in_per_s: float = 0.0
    bytes_out_per_s: float = 0.0
    draining: bool = False
    requests_per_s: float = 0.0


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
    auto_balance: bool = False
    #: The balancer's recent decisions, newest last.
    balancer: list[str] = []
    moves_in_progress: int = 0


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


class LoadReport(msgspec.Struct, array_like=True):
    """A partition's traffic at its leader since the previous report, per second."""

    topic: str
    partition: int
    bytes_in: float
    bytes_out: float
    #: Produce and fetch requests that touched it (reported and shown; the balancer weighs bytes only).
    requests: float = 0.0


class Heartbeat(Request[HeartbeatResult]):
    method = "heartbeat"
    response = HeartbeatResult
    session = True
    broker_id: int
    broker_epoch: int
    #: Every few heartbeats: the partitions it leads that carried traffic; None between reports
    #: (the last report stands).
    loads: list[LoadReport] | None = None
    #: The oldest relay object (ms) this broker's WAL may still need (docs/zones.md); -1: cannot say yet.
    relay_floor_ms: int = -1


class ControlledShutdown(Request[ShutdownResult]):
    """The broker has uploaded its WAL and takes no more appends: move its partitions away."""

    method = "controlled_shutdown"
    response = ShutdownResult
    broker_id: int
    broker_epoch: int
    #: Of the partitions it had open, so their next leaders need not scan the streams.
    snapshots: list[PartitionSnapshot] = []


class ReassignResult(msgspec.Struct):
    """Per-partition outcome in request order: (topic, partition, error code name or "", message)."""

    results: list[tuple[str, int, str, str]]
    version: int
    moves: list[int] = []


class Reassign(Request[ReassignResult]):
    """Move partitions to other brokers (target -1 cancels a move that has not released yet)."""

    method = "reassign"
    response = ReassignResult
    #: (topic, partition, target broker)
    moves: list[tuple[str, int, int]]
    cause: str = "reassign"


class Released(msgspec.Struct):
    topic: str
    partition: int
    leader_epoch: int
    drained_ms: int
    released_ms: int
    uploaded_bytes: int
    snapshot: PartitionSnapshot | None = None


class PartitionsReleased(Request[VersionResult]):
    """The old leader stopped appending to these partitions and their WAL tails are in S3."""

    method = "partitions_released"
    response = VersionResult
    broker_id: int
    broker_epoch: int
    released: list[Released]


class PartitionOpened(Request[VersionResult]):
    """A moved partition's new leader opened it (and maybe acknowledged its first produce)."""

    method = "partition_opened"
    response = VersionResult
    broker_id: int
    move_id: int
    topic: str
    partition: int
    leader_epoch: int
    opened_ms: int
    first_append_ms: int = 0
    from_snapshot: bool = False


class SnapshotResult(msgspec.Struct):
    snapshot: PartitionSnapshot | None = None


class GetSnapshot(Request[SnapshotResult]):
    method = "get_snapshot"
    response = SnapshotResult
    topic: str
    partition: int


class BalanceMove(msgspec.Struct, array_like=True):
    topic: str
    partition: int
    source: int
    target: int


class BrokerLoad(msgspec.Struct, array_like=True):
    broker: int
    partitions: int
    bytes_per_s: float


class BalanceResult(msgspec.Struct):
    """A balancer plan: the moves, the spread before and after, and whether it is within bounds."""

    moves: list[BalanceMove]
    before: list[BrokerLoad]
    after: list[BrokerLoad]
    max_over_mean_before: float
    max_over_mean_after: float
    balanced: bool
    reason: str
    plan_ms: float
    started: list[int] = []
    version: int = 0


class Balance(Request[BalanceResult]):
    """Plan a rebalance (and start it unless dry_run). `exclude`: brokers to drain (scale in)."""

    method = "balance"
    response = BalanceResult
    dry_run: bool = True
    exclude: list[int] = []
    max_moves: int = 0


class ForgetBroker(Request[VersionResult]):
    """`amq scale in`: a broker that stopped and leads nothing leaves the cluster's records."""

    method = "forget_broker"
    response = VersionResult
    broker_id: int


class MovesResult(msgspec.Struct):
    moves: list[MoveRecord]


class ListMoves(Request[MovesResult]):
    """Recent moves (all, or those with the given ids), oldest first."""

    method = "list_moves"
    response = MovesResult
    ids: list[int] = []


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
        Reassign, PartitionsReleased, PartitionOpened, GetSnapshot, ListMoves, Balance, ForgetBroker,
    )
}  # fmt: skip
