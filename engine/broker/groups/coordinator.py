"""The classic consumer-group coordinator, after Apache Kafka's GroupCoordinator.

Every transition runs synchronously between awaits, so the single-threaded event
loop is the group lock. Parked requests (JoinGroup during the join phase,
SyncGroup until the leader's assignment is durable) are callbacks on the member
that complete a future the request awaits; a request cancelled meanwhile (client
gone) leaves the callback harmless. Timers (session expiry, rebalance timeout,
pending-sync timeout) come from an injected ``Timers`` so that tests drive time
by hand.

Group state and committed offsets are records in the ``__consumer_offsets``
streams (see ``records.py`` and ``store.py``); a group lives in partition
``partition_for(group_id)``. A partition is loaded (replayed) when this broker
first needs it and dropped when the broker stops coordinating it or its stream
fails.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from engine.broker.errors import BrokerError
from engine.broker.groups.group import (
    CommittedOffset,
    Group,
    GroupState,
    JoinCallback,
    JoinResult,
    Member,
    MemberInfo,
    Protocols,
    SyncCallback,
    SyncResult,
)
from engine.broker.groups.records import (
    GroupValue,
    MemberValue,
    OffsetKey,
    OffsetValue,
    RecordFormatError,
    decode_group_value,
    decode_key,
    decode_offset_value,
    encode_group_key,
    encode_group_value,
    encode_offset_key,
    encode_offset_value,
)
from engine.broker.groups.store import KV, OffsetsLog, StreamLike
from engine.broker.groups.timers import LoopTimers, Timers
from engine.protocol import ErrorCode
from engine.storage.errors import FencedError, StreamClosed

if TYPE_CHECKING:
    from engine.broker.ports import CoordinatorHost

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"


def java_string_hash(s: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units), as a signed 32-bit int."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(group_id: str, partitions: int) -> int:
    """The __consumer_offsets partition of a group: Kafka's placement, as the broker computes it."""
    return abs(java_string_hash(group_id)) % partitions


@dataclass(slots=True)
class GroupConfig:
    """Coordinator settings (Kafka's broker config names in the comments)."""

    offsets_topic_partitions: int = 8  # offsets.topic.num.partitions; never change it on a live cluster
    min_session_timeout_ms: int = 1_000  # group.min.session.timeout.ms (Kafka: 6000)
    max_session_timeout_ms: int = 1_800_000  # group.max.session.timeout.ms
    max_group_size: int = 0  # group.max.size; 0 = unlimited
    new_member_join_timeout_ms: int = 300_000  # how long a member that never got its join answered may stay
    offset_metadata_max_bytes: int = 4096  # offset.metadata.max.bytes
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000  # offsets.retention.minutes
    offsets_retention_check_interval_ms: int = 600_000  # offsets.retention.check.interval.ms
    load_wait_ms: int = 10_000  # a request waits this long for a loading partition, then gets LOAD_IN_PROGRESS
    compact_min_records: int = 10_000  # snapshot-and-trim a partition once it holds this many records...
    compact_ratio: float = 4.0  # ...and this many times its live keys

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GroupConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown group coordinator setting(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(slots=True)
class OffsetCommitEntry:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str | None = ""


@dataclass(slots=True)
class MemberSummary:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(slots=True)
class GroupSummary:
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: list[MemberSummary] = field(default_factory=list)


@dataclass(slots=True)
class GroupListing:
    group_id: str
    protocol_type: str
    state: str


class _StandaloneHost:
    """The ``CoordinatorHost`` of a coordinator without a broker (tests): streams from ``open_stream``,
    Kafka's placement over ``partitions``, every partition coordinated here unless ``is_local`` says no."""

    node_id = 0

    def __init__(
        self,
        open_stream: Callable[[str, int], Awaitable[StreamLike]],
        partitions: int,
        is_local: Callable[[str], bool] | None = None,
    ) -> None:
        self._open_stream = open_stream
        self._is_local = is_local
        self.config = _OffsetsTopic(partitions)

    def topic(self, name: str) -> object | None:
        return name  # no metadata here: every topic exists (start loads the partitions it owns)

    async def open_internal_stream(self, topic: str, partition: int) -> StreamLike:
        return await self._open_stream(topic, partition)

    def offsets_partition_for(self, key: str) -> int:
        return partition_for(key, self.config.offsets_topic_num_partitions)

    def coordinator_for(self, key: str) -> tuple[int, str, int]:
        local = self._is_local is None or self._is_local(key)
        return (self.node_id if local else -1), "localhost", 0


@dataclass(slots=True, frozen=True)
class _OffsetsTopic:
    offsets_topic_num_partitions: int


class _Partition:
    __slots__ = ("groups", "index", "loaded", "loading", "log")

    def __init__(self, index: int) -> None:
        self.index = index
        self.log: OffsetsLog | None = None
        self.groups: dict[str, Group] = {}
        self.loading: asyncio.Task[None] | None = None
        self.loaded = False


def _storage_error_code(exc: BaseException) -> ErrorCode:
    """What a client should hear when the __consumer_offsets stream failed or could not open."""
    if isinstance(exc, FencedError | StreamClosed):
        # A newer leader epoch owns the partition: the client looks for the coordinator again.
        return ErrorCode.NOT_COORDINATOR
    if isinstance(exc, BrokerError) and exc.error_code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.NOT_COORDINATOR):
        return ErrorCode.NOT_COORDINATOR  # from open_internal_stream: the partition is led elsewhere
    # Anything else (controller away, storage trouble) is retriable where the group lives now.
    return ErrorCode.COORDINATOR_NOT_AVAILABLE


class GroupCoordinator:
    """Kafka's classic group coordinator for the groups whose partitions this broker owns.

    ``GroupCoordinator(broker)`` uses of the broker what ``CoordinatorHost``
    (engine/broker/ports.py) lists; the number of __consumer_offsets partitions comes
    from its ``config.offsets_topic_num_partitions`` unless ``config`` is given. Without
    a broker, ``open_stream`` is required and the coordinator owns every partition
    (tests; ``is_local`` narrows that). ``timers`` drive time (tests use ManualTimers).
    """

    def __init__(
        self,
        host: CoordinatorHost | None = None,
        *,
        config: GroupConfig | None = None,
        timers: Timers | None = None,
        open_stream: Callable[[str, int], Awaitable[StreamLike]] | None = None,
        is_local: Callable[[str], bool] | None = None,
    ) -> None:
        if config is None:
            config = GroupConfig()
            if host is not None:
                config.offsets_topic_partitions = host.config.offsets_topic_num_partitions
        if host is None:
            if open_stream is None:
                raise ValueError("GroupCoordinator needs a broker or an open_stream function")
            host = _StandaloneHost(open_stream, config.offsets_topic_partitions, is_local)
        self._host: CoordinatorHost = host
        self.config = config
        self._timers: Timers = timers or LoopTimers()
        self._open_stream = open_stream or host.open_internal_stream
        self._is_local = is_local or self._host_is_local
        self._partitions = [_Partition(i) for i in range(config.offsets_topic_partitions)]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._partition_keys: dict[int, str] = {}
        self._running = False
        self._expiry_timer: Any = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start loading the partitions this broker coordinates, in the background.

        Only when __consumer_offsets exists already: a cluster nobody used groups on does
        not get the topic at start (the first group request creates it, as in Kafka).
        """
        self._running = True
        if self._topic_exists():
            for part in self._partitions:
                if self._owns_partition(part.index):
                    self._start_load(part)
        self._schedule_expiry()

    async def stop(self) -> None:
        self._running = False
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        for part in self._partitions:
            self._unload(part, ErrorCode.NOT_COORDINATOR)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_loaded(self) -> None:
        """Wait until every partition being loaded is loaded (tests, and a broker that wants to)."""
        tasks = [p.loading for p in self._partitions if p.loading is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def partition_moved(self, index: int) -> None:
        """Leadership or the leader epoch of __consumer_offsets partition ``index`` changed.

        The broker calls this when its metadata says so. Whatever is loaded (or loading) came
        from a stream that is now closed or fenced: drop it, answering parked requests with
        NOT_COORDINATOR, so that the next request checks ownership again and, if the partition
        is still (or again) here, replays it from the stream at the new epoch.
        """
        if not 0 <= index < len(self._partitions):
            return
        part = self._partitions[index]
        if part.loaded or part.loading is not None:
            log.info("%s-%d moved (leader or leader epoch): unloading", OFFSETS_TOPIC, index)
            self._unload(part, ErrorCode.NOT_COORDINATOR)

    def partition_for(self, group_id: str) -> int:
        # The broker's coordinator_for places keys with this; both must agree or two
        # brokers would write one partition.
        return self._host.offsets_partition_for(group_id)

    def key_for_partition(self, index: int) -> str:
        """Some group id that lives in partition ``index`` (to ask who coordinates that partition)."""
        key = self._partition_keys.get(index)
        if key is None:
            i = 0
            while self.partition_for(str(i)) != index:
                i += 1
            key = self._partition_keys[index] = str(i)
        return key

    def _topic_exists(self) -> bool:
        return self._host.topic(OFFSETS_TOPIC) is not None

    def _host_is_local(self, group_id: str) -> bool:
        node_id, _, _ = self._host.coordinator_for(group_id)
        return node_id == self._host.node_id

    def _owns(self, group_id: str) -> bool:
        try:
            return self._is_local(group_id)
        except Exception:
            log.exception("coordinator_for(%r) failed", group_id)
            return False

    def _owns_partition(self, index: int) -> bool:
        return self._owns(self.key_for_partition(index))

    # -- partitions: load, unload, append -----------------------------------------------

    def _start_load(self, part: _Partition) -> asyncio.Task[None]:
        if part.loading is None:
            part.loading = asyncio.get_running_loop().create_task(self._load(part))
            # Failures are logged by _load and reported to the requests waiting on it.
            part.loading.add_done_callback(lambda t: t.cancelled() or t.exception())
        return part.loading

    async def _load(self, part: _Partition) -> None:
        try:
            stream = await self._open_stream(OFFSETS_TOPIC, part.index)
            olog = OffsetsLog(
                stream,
                now_ms=self._timers.now_ms,
                compact_min_records=self.config.compact_min_records,
                compact_ratio=self.config.compact_ratio,
            )
            records = await olog.replay()
            groups = self._rebuild(part.index, records)
            part.log = olog
            part.groups = groups
            part.loaded = True
            for g in groups.values():
                for m in g.members.values():
                    self._schedule_heartbeat(g, m)
            level = logging.INFO if records else logging.DEBUG
            log.log(level, "loaded %s-%d: %d records, %d groups", OFFSETS_TOPIC, part.index, len(records), len(groups))
        except Exception as e:
            # A BrokerError (not the leader, controller away) is expected and retried on the
            # next request; anything else is a bug worth its traceback.
            expected = isinstance(e, BrokerError | FencedError | StreamClosed)
            log.warning("loading %s-%d failed: %s", OFFSETS_TOPIC, part.index, e, exc_info=not expected)
            raise
        finally:
            if part.loading is asyncio.current_task():
                part.loading = None

    def _rebuild(self, index: int, records: list[tuple[bytes, bytes | None, int]]) -> dict[str, Group]:
        metas: dict[str, GroupValue] = {}
        offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        for key, value, log_offset in records:
            try:
                k = decode_key(key)
                if isinstance(k, OffsetKey):
                    per_group = offsets.setdefault(k.group, {})
                    if value is None:
                        per_group.pop((k.topic, k.partition), None)
                    else:
                        v = decode_offset_value(value)
                        per_group[(k.topic, k.partition)] = CommittedOffset(
                            v.offset, v.leader_epoch, v.metadata, v.commit_timestamp, log_offset
                        )
                elif value is None:
                    metas.pop(k.group, None)
                else:
                    metas[k.group] = decode_group_value(value)
            except RecordFormatError as e:
                log.warning("%s-%d offset %d: skipping record: %s", OFFSETS_TOPIC, index, log_offset, e)
        groups: dict[str, Group] = {}
        for group_id in {*metas, *(g for g, o in offsets.items() if o)}:
            g = Group(group_id, index)
            meta = metas.get(group_id)
            if meta is not None:
                g.generation_id = meta.generation
                g.protocol_type = meta.protocol_type or None
                g.protocol_name = meta.protocol
                g.state_timestamp_ms = meta.current_state_timestamp
                for mv in meta.members:
                    g.add(
                        Member(
                            mv.member_id,
                            mv.group_instance_id,
                            mv.client_id,
                            mv.client_host,
                            mv.rebalance_timeout_ms,
                            mv.session_timeout_ms,
                            g.protocol_type or "",
                            [(meta.protocol or "", mv.subscription)],
                            mv.assignment,
                        )
                    )
                g.leader_id = meta.leader if meta.leader in g.members else next(iter(g.members), None)
                # What was written last is a completed generation: its members carry on
                # heartbeating as if nothing happened (Kafka loads such a group as Stable).
                g.state = GroupState.STABLE if g.members else GroupState.EMPTY
            g.offsets = offsets.get(group_id, {})
            groups[group_id] = g
        return groups

    def _unload(self, part: _Partition, error: ErrorCode) -> None:
        if part.loading is not None:
            part.loading.cancel()
            part.loading = None
        for g in part.groups.values():
            self._deactivate(g, error)
        part.groups = {}
        part.loaded = False
        if part.log is not None:
            part.log.cancel()
            part.log = None

    def _deactivate(self, g: Group, error: ErrorCode) -> None:
        g.active = False
        for t in (g.join_timer, g.sync_timer, *g.pending_members.values()):
            if t is not None:
                t.cancel()
        g.pending_members.clear()
        for m in g.members.values():
            m.cancel_heartbeat()
            m.respond_join(JoinResult(error, member_id=m.member_id))
            m.respond_sync(SyncResult(error))

    async def _partition(self, group_id: str) -> tuple[_Partition | None, ErrorCode]:
        if not self._running:
            return None, ErrorCode.COORDINATOR_NOT_AVAILABLE
        part = self._partitions[self.partition_for(group_id)]
        if not self._owns(group_id):
            if part.loaded or part.loading is not None:
                log.info("%s-%d is coordinated elsewhere now: unloading", OFFSETS_TOPIC, part.index)
                self._unload(part, ErrorCode.NOT_COORDINATOR)
            return None, ErrorCode.NOT_COORDINATOR
        if part.loaded:
            return part, ErrorCode.NONE
        task = self._start_load(part)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.config.load_wait_ms / 1000)
        except TimeoutError:
            return None, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        except asyncio.CancelledError:
            if task.cancelled():  # the load was abandoned (unload, stop), not this request
                return None, ErrorCode.NOT_COORDINATOR
            raise
        except Exception as e:
            return None, _storage_error_code(e)
        return (part, ErrorCode.NONE) if part.loaded else (None, ErrorCode.COORDINATOR_NOT_AVAILABLE)

    def _append(
        self, part: _Partition, records: Sequence[KV], then: Callable[[ErrorCode, int], None] | None = None
    ) -> asyncio.Future[ErrorCode]:
        """Append records to the partition's log; ``then`` runs (synchronously) once the outcome is known.

        The outcome is applied in a done-callback, not after an await in the request, so that
        a cancelled request still leaves memory matching the log.
        """
        loop = asyncio.get_running_loop()
        result: asyncio.Future[ErrorCode] = loop.create_future()
        olog = part.log

        def finish(code: ErrorCode, base: int) -> None:
            if code != ErrorCode.NONE and part.log is olog and olog is not None:
                # A stream that failed an append takes no more: start over from what is durable.
                log.warning("%s-%d append failed (%s): unloading", OFFSETS_TOPIC, part.index, code.name)
                self._unload(part, code)
            if then is not None:
                then(code, base)
            if not result.done():
                result.set_result(code)

        if olog is None:
            finish(ErrorCode.NOT_COORDINATOR, -1)
            return result
        try:
            fut = olog.append(records)
        except Exception as e:
            log.exception("append to %s-%d failed", OFFSETS_TOPIC, part.index)
            finish(_storage_error_code(e), -1)
            return result

        def done(f: asyncio.Future[int]) -> None:
            if f.cancelled():
                finish(ErrorCode.COORDINATOR_NOT_AVAILABLE, -1)
            elif f.exception() is not None:
                finish(_storage_error_code(f.exception()), -1)  # type: ignore[arg-type]
            else:
                finish(ErrorCode.NONE, f.result())

        fut.add_done_callback(done)
        return result

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _group_record(self, g: Group, assignments: dict[str, bytes]) -> KV:
        value = GroupValue(
            protocol_type=g.protocol_type or "",
            generation=g.generation_id,
            protocol=g.protocol_name,
            leader=g.leader_id,
            current_state_timestamp=g.state_timestamp_ms,
            members=[
                MemberValue(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.client_host,
                    m.rebalance_timeout_ms,
                    m.session_timeout_ms,
                    m.metadata(g.protocol_name),
                    assignments.get(m.member_id, m.assignment),
                )
                for m in g.members.values()
            ],
        )
        return encode_group_key(g.group_id), encode_group_value(value)

    def _store_group(
        self, g: Group, assignments: dict[str, bytes], then: Callable[[ErrorCode], None] | None = None
    ) -> asyncio.Future[ErrorCode]:
        part = self._partitions[g.partition]

        def after(code: ErrorCode, _base: int) -> None:
            if code != ErrorCode.NONE:
                log.warning("group %s: storing generation %d failed: %s", g.group_id, g.generation_id, code.name)
            if then is not None:
                then(code)

        return self._append(part, [self._group_record(g, assignments)], after)

    # -- timers -----------------------------------------------------------------------------

    def _schedule_heartbeat(self, g: Group, m: Member) -> None:
        m.cancel_heartbeat()
        timeout = self.config.new_member_join_timeout_ms if m.is_new else m.session_timeout_ms
        m.heartbeat_timer = self._timers.call_later(timeout, lambda: self._on_heartbeat_expired(g, m))

    def _on_heartbeat_expired(self, g: Group, m: Member) -> None:
        m.heartbeat_timer = None
        if not g.active or g.members.get(m.member_id) is not m or g.is_(GroupState.DEAD):
            return
        if not m.is_new and (m.join_callback is not None or m.sync_callback is not None):
            # Parked in a join or sync: the rebalance and pending-sync timeouts look after it.
            self._schedule_heartbeat(g, m)
            return
        log.info("group %s: member %s failed (session timeout): removing it", g.group_id, m.member_id)
        self._remove_member_and_update_group(g, m)

    def _on_pending_member_expired(self, g: Group, member_id: str) -> None:
        if not g.active or g.pending_members.pop(member_id, None) is None:
            return
        if g.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(g)

    def _on_join_timeout(self, g: Group) -> None:
        g.join_timer = None
        if g.active and g.is_(GroupState.PREPARING_REBALANCE):
            self._complete_join(g)

    def _on_sync_timeout(self, g: Group, generation: int) -> None:
        g.sync_timer = None
        if not g.active or generation != g.generation_id or not g.pending_sync:
            return
        if g.state not in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
            return
        late = sorted(g.pending_sync)
        log.info("group %s: members %s did not sync in time: removing them", g.group_id, late)
        for member_id in late:
            m = g.remove(member_id)
            if m is not None:
                m.respond_join(JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=member_id))
                m.respond_sync(SyncResult(ErrorCode.UNKNOWN_MEMBER_ID))
        self._prepare_rebalance(g)

    # -- state machine ------------------------------------------------------------------

    def _maybe_prepare_rebalance(self, g: Group) -> None:
        if g.can_rebalance():
            self._prepare_rebalance(g)

    def _prepare_rebalance(self, g: Group) -> None:
        if g.is_(GroupState.COMPLETING_REBALANCE):
            self._reset_and_propagate_assignment_error(g, ErrorCode.REBALANCE_IN_PROGRESS)
        if g.sync_timer is not None:
            g.sync_timer.cancel()
            g.sync_timer = None
        g.pending_sync.clear()
        g.transition(GroupState.PREPARING_REBALANCE, self._timers.now_ms())
        if g.join_timer is not None:
            g.join_timer.cancel()
        g.join_timer = self._timers.call_later(g.rebalance_timeout_ms(), lambda: self._on_join_timeout(g))
        self._try_complete_join(g)

    def _try_complete_join(self, g: Group) -> None:
        if g.is_(GroupState.PREPARING_REBALANCE) and g.has_all_members_joined():
            self._complete_join(g)

    def _complete_join(self, g: Group) -> None:
        if g.join_timer is not None:
            g.join_timer.cancel()
            g.join_timer = None
        # Dynamic members that did not rejoin in time are gone; static ones keep their
        # place (a restarting static member must not cost a rebalance).
        for m in g.not_yet_rejoined():
            if not m.is_static:
                g.remove(m.member_id)
        if g.is_(GroupState.DEAD):
            return
        if g.members and not self._elect_joined_leader(g):
            # Only static members that have not rejoined: wait another round for them.
            g.join_timer = self._timers.call_later(g.rebalance_timeout_ms(), lambda: self._on_join_timeout(g))
            return
        now = self._timers.now_ms()
        g.generation_id += 1
        if not g.members:
            g.protocol_name = None
            g.transition(GroupState.EMPTY, now)
            self._store_group(g, {})
            return
        g.protocol_name = g.select_protocol()
        g.transition(GroupState.COMPLETING_REBALANCE, now)
        infos = g.member_infos()
        for m in g.members.values():
            m.respond_join(
                JoinResult(
                    ErrorCode.NONE,
                    member_id=m.member_id,
                    generation_id=g.generation_id,
                    protocol_type=g.protocol_type,
                    protocol_name=g.protocol_name,
                    leader_id=g.leader_id or "",
                    members=infos if g.is_leader(m.member_id) else [],
                )
            )
            m.is_new = False
            self._schedule_heartbeat(g, m)
            g.pending_sync.add(m.member_id)
        generation = g.generation_id
        g.sync_timer = self._timers.call_later(g.rebalance_timeout_ms(), lambda: self._on_sync_timeout(g, generation))

    def _elect_joined_leader(self, g: Group) -> bool:
        leader = g.members.get(g.leader_id or "")
        if leader is not None and leader.join_callback is not None:
            return True
        for m in g.members.values():
            if m.join_callback is not None:
                g.leader_id = m.member_id
                return True
        return False

    def _reset_and_propagate_assignment_error(self, g: Group, error: ErrorCode) -> None:
        for m in g.members.values():
            m.assignment = b""
            m.respond_sync(SyncResult(error))

    def _set_and_propagate_assignment(self, g: Group, assignments: dict[str, bytes]) -> None:
        for m in g.members.values():
            m.assignment = assignments.get(m.member_id, b"")
        for m in g.members.values():
            if m.sync_callback is not None:
                m.respond_sync(SyncResult(ErrorCode.NONE, m.assignment, g.protocol_type, g.protocol_name))
                self._schedule_heartbeat(g, m)

    def _remove_member_and_update_group(self, g: Group, m: Member) -> None:
        m.respond_join(JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=m.member_id))
        m.respond_sync(SyncResult(ErrorCode.UNKNOWN_MEMBER_ID))
        g.remove(m.member_id)
        if g.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._maybe_prepare_rebalance(g)
        elif g.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(g)

    def _current_generation_result(self, g: Group, m: Member) -> JoinResult:
        return JoinResult(
            ErrorCode.NONE,
            member_id=m.member_id,
            generation_id=g.generation_id,
            protocol_type=g.protocol_type,
            protocol_name=g.protocol_name,
            leader_id=g.leader_id or "",
            members=g.member_infos() if g.is_leader(m.member_id) else [],
        )

    # -- JoinGroup ------------------------------------------------------------------------

    async def join_group(
        self,
        *,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Protocols,
        require_known_member_id: bool,
    ) -> JoinResult:
        if not group_id:
            return JoinResult(ErrorCode.INVALID_GROUP_ID, member_id=member_id)
        if not self.config.min_session_timeout_ms <= session_timeout_ms <= self.config.max_session_timeout_ms:
            return JoinResult(ErrorCode.INVALID_SESSION_TIMEOUT, member_id=member_id)
        part, code = await self._partition(group_id)
        if part is None:
            return JoinResult(code, member_id=member_id)
        g = part.groups.get(group_id)
        created = False
        if g is None:
            if member_id:
                return JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=member_id)
            g = part.groups[group_id] = Group(group_id, part.index, state_timestamp_ms=self._timers.now_ms())
            created = True
        fut: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()

        def respond(result: JoinResult) -> None:
            if not fut.done():
                fut.set_result(result)

        args = (group_instance_id, client_id, client_host, session_timeout_ms, rebalance_timeout_ms, protocol_type)
        if not member_id:
            self._join_unknown(g, *args, protocols, require_known_member_id, respond)
        else:
            self._join_known(g, member_id, *args, protocols, respond)
        result = await fut
        if created and result.error != ErrorCode.NONE:
            self._drop_if_unused(part, g)
        return result

    def _join_unknown(
        self,
        g: Group,
        instance_id: str | None,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Protocols,
        require_known_member_id: bool,
        respond: JoinCallback,
    ) -> None:
        if g.is_(GroupState.DEAD):
            respond(JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE))
            return
        if not g.supports_protocols(protocol_type, protocols):
            respond(JoinResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
            return
        old_id = g.static_members.get(instance_id) if instance_id is not None else None
        max_size = self.config.max_group_size
        if old_id is None and max_size and len(g.members) + len(g.pending_members) >= max_size:
            respond(JoinResult(ErrorCode.GROUP_MAX_SIZE_REACHED))
            return
        new_id = f"{instance_id if instance_id is not None else client_id}-{uuid.uuid4()}"
        if instance_id is not None:
            if old_id is not None:
                self._replace_static_member(
                    g,
                    instance_id,
                    old_id,
                    new_id,
                    client_id,
                    client_host,
                    session_timeout_ms,
                    rebalance_timeout_ms,
                    protocols,
                    respond,
                )
            else:
                self._add_member_and_rebalance(
                    g,
                    new_id,
                    instance_id,
                    client_id,
                    client_host,
                    session_timeout_ms,
                    rebalance_timeout_ms,
                    protocol_type,
                    protocols,
                    respond,
                )
        elif require_known_member_id:
            # The client retries with this id; until then it counts as a member the join
            # phase waits for (so a rebalance does not complete without it).
            g.pending_members[new_id] = self._timers.call_later(
                session_timeout_ms, lambda: self._on_pending_member_expired(g, new_id)
            )
            respond(JoinResult(ErrorCode.MEMBER_ID_REQUIRED, member_id=new_id))
        else:
            self._add_member_and_rebalance(
                g,
                new_id,
                None,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocol_type,
                protocols,
                respond,
            )

    def _join_known(
        self,
        g: Group,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Protocols,
        respond: JoinCallback,
    ) -> None:
        if g.is_(GroupState.DEAD):
            respond(JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE, member_id=member_id))
            return
        if not g.supports_protocols(protocol_type, protocols):
            respond(JoinResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id=member_id))
            return
        if member_id in g.pending_members:
            g.pending_members.pop(member_id).cancel()
            self._add_member_and_rebalance(
                g,
                member_id,
                instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocol_type,
                protocols,
                respond,
            )
            return
        code = g.validate_member(member_id, instance_id)
        if code != ErrorCode.NONE:
            respond(JoinResult(code, member_id=member_id))
            return
        m = g.members[member_id]
        if g.is_(GroupState.PREPARING_REBALANCE):
            self._update_member_and_rebalance(g, m, protocols, rebalance_timeout_ms, session_timeout_ms, respond)
        elif g.is_(GroupState.COMPLETING_REBALANCE):
            if m.matches(protocols):
                # A retried join (the response got lost): answer with what it missed.
                respond(self._current_generation_result(g, m))
            else:
                self._update_member_and_rebalance(g, m, protocols, rebalance_timeout_ms, session_timeout_ms, respond)
        elif g.is_(GroupState.STABLE):
            if g.is_leader(member_id) or not m.matches(protocols):
                # The leader rejoining means it wants a new assignment (e.g. metadata changed).
                self._update_member_and_rebalance(g, m, protocols, rebalance_timeout_ms, session_timeout_ms, respond)
            else:
                respond(self._current_generation_result(g, m))
        else:
            respond(JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=member_id))

    def _add_member_and_rebalance(
        self,
        g: Group,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Protocols,
        respond: JoinCallback,
    ) -> None:
        m = Member(
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            protocol_type,
            protocols,
            join_callback=respond,
            is_new=True,
        )
        g.add(m)
        self._schedule_heartbeat(g, m)
        if g.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(g)
        else:
            self._maybe_prepare_rebalance(g)

    def _update_member_and_rebalance(
        self,
        g: Group,
        m: Member,
        protocols: Protocols,
        rebalance_timeout_ms: int,
        session_timeout_ms: int,
        respond: JoinCallback,
    ) -> None:
        # A second join from the same member replaces the first; answer the old one.
        m.respond_join(JoinResult(ErrorCode.REBALANCE_IN_PROGRESS, member_id=m.member_id))
        m.protocols = protocols
        m.rebalance_timeout_ms = rebalance_timeout_ms
        m.session_timeout_ms = session_timeout_ms
        m.join_callback = respond
        if g.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(g)
        else:
            self._maybe_prepare_rebalance(g)

    def _replace_static_member(
        self,
        g: Group,
        instance_id: str,
        old_id: str,
        new_id: str,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocols: Protocols,
        respond: JoinCallback,
    ) -> None:
        old = g.members[old_id]
        # Whoever still holds the old id is a zombie (or the pre-restart process): fence it.
        old.respond_join(JoinResult(ErrorCode.FENCED_INSTANCE_ID, member_id=old_id))
        old.respond_sync(SyncResult(ErrorCode.FENCED_INSTANCE_ID))
        current_leader = g.leader_id or ""
        saved = (old.protocols, old.rebalance_timeout_ms, old.session_timeout_ms, old.client_id, old.client_host)
        m = g.replace_static_member(instance_id, old_id, new_id)
        m.protocols = protocols
        m.rebalance_timeout_ms = rebalance_timeout_ms
        m.session_timeout_ms = session_timeout_ms
        m.client_id = client_id
        m.client_host = client_host
        m.join_callback = respond
        self._schedule_heartbeat(g, m)
        log.info("group %s: static member %s rejoined as %s (was %s)", g.group_id, instance_id, new_id, old_id)
        if g.is_(GroupState.STABLE):
            if g.protocol_name != g.select_protocol():
                self._prepare_rebalance(g)
                return
            generation = g.generation_id

            def stored(code: ErrorCode) -> None:
                if not g.active or m.join_callback is not respond:
                    return  # a rebalance (or unload) took over this member's join meanwhile
                if code != ErrorCode.NONE:
                    if g.static_members.get(instance_id) == new_id:
                        g.replace_static_member(instance_id, new_id, old_id)
                        m.protocols, m.rebalance_timeout_ms, m.session_timeout_ms, m.client_id, m.client_host = saved
                        self._schedule_heartbeat(g, m)
                    m.respond_join(JoinResult(code, member_id=new_id))
                    return
                # The old leader id goes back, so that this member (even if it led) does not
                # run an assignment a stable group would never hand out.
                m.respond_join(
                    JoinResult(
                        ErrorCode.NONE,
                        member_id=new_id,
                        generation_id=generation,
                        protocol_type=g.protocol_type,
                        protocol_name=g.protocol_name,
                        leader_id=current_leader,
                    )
                )

            self._store_group(g, {}, stored)
        elif g.is_(GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(g)
        elif g.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(g)

    # -- SyncGroup -------------------------------------------------------------------------

    async def sync_group(
        self,
        *,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: dict[str, bytes],
    ) -> SyncResult:
        if not group_id:
            return SyncResult(ErrorCode.INVALID_GROUP_ID)
        part, code = await self._partition(group_id)
        if part is None:
            return SyncResult(code)
        g = part.groups.get(group_id)
        if g is None:
            return SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
        if g.is_(GroupState.DEAD):
            return SyncResult(ErrorCode.COORDINATOR_NOT_AVAILABLE)
        code = g.validate_member(member_id, group_instance_id)
        if code != ErrorCode.NONE:
            return SyncResult(code)
        if generation_id != g.generation_id:
            return SyncResult(ErrorCode.ILLEGAL_GENERATION)
        if (protocol_type is not None and protocol_type != g.protocol_type) or (
            protocol_name is not None and protocol_name != g.protocol_name
        ):
            return SyncResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL)
        m = g.members[member_id]
        if g.is_(GroupState.PREPARING_REBALANCE):
            return SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
        if g.is_(GroupState.STABLE):
            self._mark_synced(g, member_id)
            self._schedule_heartbeat(g, m)
            return SyncResult(ErrorCode.NONE, m.assignment, g.protocol_type, g.protocol_name)
        if not g.is_(GroupState.COMPLETING_REBALANCE):
            return SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
        fut: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()

        def respond(result: SyncResult) -> None:
            if not fut.done():
                fut.set_result(result)

        m.respond_sync(SyncResult(ErrorCode.REBALANCE_IN_PROGRESS))
        m.sync_callback = respond
        self._mark_synced(g, member_id)
        self._schedule_heartbeat(g, m)
        if g.is_leader(member_id):
            full = {mid: assignments.get(mid, b"") for mid in g.members}
            self._store_group(g, full, self._after_assignment_stored(g, g.generation_id, full))
        return await fut

    def _mark_synced(self, g: Group, member_id: str) -> None:
        g.pending_sync.discard(member_id)
        if not g.pending_sync and g.sync_timer is not None:
            g.sync_timer.cancel()
            g.sync_timer = None

    def _after_assignment_stored(
        self, g: Group, generation: int, assignments: dict[str, bytes]
    ) -> Callable[[ErrorCode], None]:
        def stored(code: ErrorCode) -> None:
            if not g.active or not g.is_(GroupState.COMPLETING_REBALANCE) or g.generation_id != generation:
                return
            if code != ErrorCode.NONE:
                self._reset_and_propagate_assignment_error(g, code)
                self._maybe_prepare_rebalance(g)
                return
            self._set_and_propagate_assignment(g, assignments)
            g.transition(GroupState.STABLE, self._timers.now_ms())

        return stored

    # -- Heartbeat, LeaveGroup ------------------------------------------------------------------

    async def heartbeat(
        self, *, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> ErrorCode:
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        part, code = await self._partition(group_id)
        if part is None:
            return code
        g = part.groups.get(group_id)
        if g is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if g.is_(GroupState.DEAD):
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        code = g.validate_member(member_id, group_instance_id)
        if code != ErrorCode.NONE:
            return code
        if generation_id != g.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        if g.is_(GroupState.EMPTY):
            return ErrorCode.UNKNOWN_MEMBER_ID
        self._schedule_heartbeat(g, g.members[member_id])
        if g.is_(GroupState.PREPARING_REBALANCE):
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE

    async def leave_group(
        self, *, group_id: str, members: Sequence[tuple[str, str | None]]
    ) -> tuple[ErrorCode, list[ErrorCode]]:
        """Remove members ((member id, instance id) pairs): (group error, per-member errors)."""
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID, []
        part, code = await self._partition(group_id)
        if part is None:
            return code, []
        g = part.groups.get(group_id)
        if g is None:
            return ErrorCode.NONE, [ErrorCode.UNKNOWN_MEMBER_ID] * len(members)
        if g.is_(GroupState.DEAD):
            return ErrorCode.COORDINATOR_NOT_AVAILABLE, []
        out: list[ErrorCode] = []
        for member_id, instance_id in members:
            if not member_id and instance_id is not None:
                member_id = g.static_members.get(instance_id, "")
                if not member_id:
                    out.append(ErrorCode.UNKNOWN_MEMBER_ID)
                    continue
            if member_id in g.pending_members:
                g.pending_members.pop(member_id).cancel()
                if g.is_(GroupState.PREPARING_REBALANCE):
                    self._try_complete_join(g)
                out.append(ErrorCode.NONE)
                continue
            code = g.validate_member(member_id, instance_id)
            if code != ErrorCode.NONE:
                out.append(code)
                continue
            log.info("group %s: member %s left", group_id, member_id)
            self._remove_member_and_update_group(g, g.members[member_id])
            out.append(ErrorCode.NONE)
        return ErrorCode.NONE, out

    # -- offsets -------------------------------------------------------------------------------

    async def commit_offsets(
        self,
        *,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        offsets: Sequence[OffsetCommitEntry],
    ) -> list[ErrorCode]:
        """Commit offsets; one error code per entry, in order. Acknowledged only once durable."""
        n = len(offsets)
        part, code = await self._partition(group_id)
        if part is None:
            return [code] * n
        g = part.groups.get(group_id)
        if g is None:
            if generation_id >= 0:
                return [ErrorCode.ILLEGAL_GENERATION] * n
            # A group that only stores offsets (assign()-based consumers).
            g = part.groups[group_id] = Group(group_id, part.index, state_timestamp_ms=self._timers.now_ms())
        code = self._validate_offset_commit(g, generation_id, member_id, group_instance_id)
        if code == ErrorCode.NONE and g.is_(GroupState.COMPLETING_REBALANCE):
            # The member has the new generation from its join response but no assignment yet.
            code = ErrorCode.REBALANCE_IN_PROGRESS
        if code != ErrorCode.NONE:
            self._drop_if_unused(part, g)
            return [code] * n
        if g.state in (GroupState.STABLE, GroupState.PREPARING_REBALANCE) and member_id in g.members:
            self._schedule_heartbeat(g, g.members[member_id])
        errors = [ErrorCode.NONE] * n
        records: list[KV] = []
        values: list[tuple[tuple[str, int], CommittedOffset]] = []
        now = self._timers.now_ms()
        for i, e in enumerate(offsets):
            meta = e.metadata or ""
            if len(meta.encode()) > self.config.offset_metadata_max_bytes:
                errors[i] = ErrorCode.OFFSET_METADATA_TOO_LARGE
                continue
            v = OffsetValue(e.offset, e.leader_epoch, meta, now)
            records.append((encode_offset_key(group_id, e.topic, e.partition), encode_offset_value(v)))
            values.append(((e.topic, e.partition), CommittedOffset(e.offset, e.leader_epoch, meta, now)))
        if not records:
            self._drop_if_unused(part, g)
            return errors

        def apply(code: ErrorCode, base: int) -> None:
            if code != ErrorCode.NONE or not g.active or part.groups.get(group_id) is not g:
                return
            for i, (tp, co) in enumerate(values):
                co.log_offset = base + i
                current = g.offsets.get(tp)
                if current is None or current.log_offset < co.log_offset:
                    g.offsets[tp] = co

        code = await self._append(part, records, apply)
        if code != ErrorCode.NONE:
            self._drop_if_unused(part, g)
            return [code if err == ErrorCode.NONE else err for err in errors]
        return errors

    def _validate_offset_commit(
        self, g: Group, generation_id: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        if g.is_(GroupState.DEAD):
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if generation_id >= 0 or member_id or instance_id is not None:
            code = g.validate_member(member_id, instance_id)
            if code != ErrorCode.NONE:
                return code
            if generation_id != g.generation_id:
                return ErrorCode.ILLEGAL_GENERATION
            return ErrorCode.NONE
        if not g.is_(GroupState.EMPTY):
            # Only members may commit for a group that has them.
            return ErrorCode.UNKNOWN_MEMBER_ID
        return ErrorCode.NONE

    def _drop_if_unused(self, part: _Partition, g: Group) -> None:
        if (
            g.is_(GroupState.EMPTY)
            and not g.members
            and not g.offsets
            and not g.pending_members
            and g.generation_id == 0
            and part.groups.get(g.group_id) is g
        ):
            del part.groups[g.group_id]

    async def fetch_offsets(
        self, *, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> tuple[ErrorCode, list[tuple[str, int, CommittedOffset | None]]]:
        """Committed offsets of the listed partitions (None: all the group has)."""
        part, code = await self._partition(group_id)
        if part is None:
            return code, []
        g = part.groups.get(group_id)
        if partitions is None:
            if g is None:
                return ErrorCode.NONE, []
            return ErrorCode.NONE, [(t, p, co) for (t, p), co in sorted(g.offsets.items())]
        return ErrorCode.NONE, [(t, p, g.offsets.get((t, p)) if g else None) for t, p in partitions]

    # -- ListGroups, DescribeGroups, DeleteGroups ---------------------------------------------

    async def list_groups(self, states: set[str] | None = None) -> tuple[ErrorCode, list[GroupListing]]:
        """Groups of every partition this broker coordinates; ``states`` filters (case-insensitive)."""
        if not self._running:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE, []
        if not self._topic_exists():
            return ErrorCode.NONE, []  # listing must not create __consumer_offsets
        wanted = {s.lower() for s in states} if states else None
        error = ErrorCode.NONE
        out: list[GroupListing] = []
        for part in self._partitions:
            if not self._owns_partition(part.index):
                continue
            p, code = await self._partition(self.key_for_partition(part.index))
            if p is None:
                error = ErrorCode.COORDINATOR_LOAD_IN_PROGRESS if code != ErrorCode.NOT_COORDINATOR else error
                continue
            for g in p.groups.values():
                if wanted is None or g.state.value.lower() in wanted:
                    out.append(GroupListing(g.group_id, g.protocol_type or "", g.state.value))
        out.sort(key=lambda x: x.group_id)
        return error, out

    async def describe_group(self, group_id: str) -> tuple[ErrorCode, GroupSummary]:
        dead = GroupSummary(group_id, GroupState.DEAD.value, "", "")
        part, code = await self._partition(group_id)
        if part is None:
            return code, dead
        g = part.groups.get(group_id)
        if g is None:
            return ErrorCode.NONE, dead
        stable = g.is_(GroupState.STABLE)
        members = [
            MemberSummary(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.metadata(g.protocol_name) if stable else b"",
                m.assignment if stable else b"",
            )
            for m in g.members.values()
        ]
        protocol = (g.protocol_name or "") if stable else ""
        return ErrorCode.NONE, GroupSummary(group_id, g.state.value, g.protocol_type or "", protocol, members)

    async def delete_groups(self, group_ids: Sequence[str]) -> list[ErrorCode]:
        out: list[ErrorCode] = []
        for group_id in group_ids:
            out.append(await self._delete_group(group_id))
        return out

    async def _delete_group(self, group_id: str) -> ErrorCode:
        part, code = await self._partition(group_id)
        if part is None:
            return code
        g = part.groups.get(group_id)
        if g is None or g.is_(GroupState.DEAD):
            return ErrorCode.GROUP_ID_NOT_FOUND
        if not g.is_(GroupState.EMPTY):
            return ErrorCode.NON_EMPTY_GROUP
        self._make_dead(part, g)
        tombstones: list[KV] = [(encode_offset_key(group_id, t, p), None) for t, p in g.offsets]
        tombstones.append((encode_group_key(group_id), None))
        return await self._append(part, tombstones)

    def _make_dead(self, part: _Partition, g: Group) -> None:
        g.transition(GroupState.DEAD, self._timers.now_ms())
        self._deactivate(g, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        if part.groups.get(g.group_id) is g:
            del part.groups[g.group_id]

    # -- offset retention --------------------------------------------------------------------

    def _schedule_expiry(self) -> None:
        interval = self.config.offsets_retention_check_interval_ms
        if interval > 0 and self._running:
            self._expiry_timer = self._timers.call_later(interval, self._expire_offsets)

    def _expire_offsets(self) -> None:
        try:
            self.expire_offsets()
        finally:
            self._schedule_expiry()

    def expire_offsets(self) -> int:
        """Kafka's offset retention: drop offsets of groups without members after the retention time.

        For a group that used group management, the clock starts when it became Empty; for a
        group that only ever stored offsets, at each offset's commit. A group left without
        offsets and members is deleted. Returns how many offsets expired.
        """
        now = self._timers.now_ms()
        retention = self.config.offsets_retention_ms
        expired_total = 0
        for part in self._partitions:
            if not part.loaded:
                continue
            for g in list(part.groups.values()):
                if not g.is_(GroupState.EMPTY):
                    continue
                empty_since = g.state_timestamp_ms if g.protocol_type is not None else -1
                expired = [
                    tp
                    for tp, co in g.offsets.items()
                    if now - (empty_since if empty_since >= 0 else co.commit_timestamp) >= retention
                ]
                if not expired:
                    continue
                records: list[KV] = [(encode_offset_key(g.group_id, t, p), None) for t, p in expired]
                for tp in expired:
                    del g.offsets[tp]
                expired_total += len(expired)
                if not g.offsets and not g.pending_members:
                    records.append((encode_group_key(g.group_id), None))
                    self._make_dead(part, g)
                self._append(part, records)
        return expired_total

    # -- introspection (tests, status) ---------------------------------------------------------

    def group(self, group_id: str) -> Group | None:
        return self._partitions[self.partition_for(group_id)].groups.get(group_id)

    def loaded_partitions(self) -> list[int]:
        return [p.index for p in self._partitions if p.loaded]

    def log_of(self, index: int) -> OffsetsLog | None:
        return self._partitions[index].log


__all__ = [
    "OFFSETS_TOPIC",
    "CommittedOffset",
    "GroupConfig",
    "GroupCoordinator",
    "GroupListing",
    "GroupSummary",
    "JoinResult",
    "MemberInfo",
    "MemberSummary",
    "OffsetCommitEntry",
    "SyncCallback",
    "SyncResult",
    "java_string_hash",
    "partition_for",
]
