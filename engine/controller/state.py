"""The controller's cluster metadata: in memory for reads, written through to its store
(engine/controller/store.py: SQLite by default, or PostgreSQL).

Every change is a record with a version; followers (brokers) ask for the records
after the version they have, or get a snapshot when they are too far behind
(the record log lives in memory only: the tables are the durable state).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.controller.api import (
    BrokerRecord,
    LoadReport,
    MoveRecord,
    PartitionSnapshot,
    Released,
    WalSpec,
    WalTakeover,
)
from engine.controller.configs import (
    OFFSETS_TOPIC,
    ConfigError,
    apply_ops,
    collision_key,
    validate_configs,
    validate_topic_name,
)
from engine.controller.store import ControllerStore, open_controller_store
from engine.protocol.errors import ErrorCode

RESERVED_INTERNAL = frozenset({OFFSETS_TOPIC, "__transaction_state"})
MAX_PARTITIONS_PER_REQUEST = 10_000
LOG_KEEP = 10_000
#: Finished moves kept for `amq reassign --timeline` and ListPartitionReassignments.
MOVES_KEEP = 2_000


def broker_dict(b: BrokerRecord) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(b)
    out["alive"] = b.alive  # for readers that only want to know that
    return out


@dataclass
class PartitionRec:
    index: int
    leader: int
    leader_epoch: int
    stream_id: int
    #: Moving to this broker: the leader releases the partition (no appends, WAL tail uploaded) first.
    target: int = -1
    #: The move under way, kept until the new leader reports the partition open.
    move_id: int = -1
    #: End offset covered by the stored leader snapshot (-1: none): the next leader loads it instead of scanning.
    snapshot_end: int = -1


@dataclass
class TopicRec:
    name: str
    id: str
    internal: bool
    replication_factor: int
    configs: dict[str, str]
    partitions: list[PartitionRec]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "internal": self.internal,
            "replication_factor": self.replication_factor,
            "configs": dict(self.configs),
            "partitions": [asdict(p) for p in self.partitions],
        }


def _result(name: str, code: ErrorCode = ErrorCode.NONE, message: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "error_code": int(code), "error_message": message, **extra}


class ControllerState:
    def __init__(
        self, store: ControllerStore | str | Path, new_term: bool = False, session_grace_s: float = 0.0
    ) -> None:
        """store: a ControllerStore, or where one is: an SQLite file's path or a postgresql:// URL.

        new_term: this controller just took the lease from another one. A leader that lost its
        lease may have shown brokers versions it never committed; jumping the version past any
        such makes every broker take a snapshot of the committed state. session_grace_s: extra
        time for brokers to find the new leader before their sessions count."""
        self.store = store if not isinstance(store, str | Path) else open_controller_store(store)
        self.brokers: dict[int, BrokerRecord] = {}
        #: When each broker was last heard from (monotonic); not persisted.
        self.last_seen: dict[int, float] = {}
        #: When a broker's session connection closed, if it has not been heard from since.
        self.lost_at: dict[int, float] = {}
        self.takeovers: dict[int, WalTakeover] = {}
        #: broker id -> (broker epoch, relay floor ms) from its last heartbeat (relay_horizon).
        self.relay_floors: dict[int, tuple[int, int]] = {}
        #: Set by `amq cluster down`: brokers that stop keep their partitions (they get them back on start).
        self.stopping = False
        self.topics: dict[str, TopicRec] = {}
        self.snapshots: dict[tuple[str, int], PartitionSnapshot] = {}
        #: Recent moves by id (memory only: a restarted controller restarts unfinished moves' bookkeeping).
        self.moves: dict[int, MoveRecord] = {}
        self.next_move_id = 1
        #: (topic, partition) -> (bytes/s in, bytes/s out) as its leader last reported (memory only).
        self.loads: dict[tuple[str, int], LoadReport] = {}
        #: When each broker last sent a load report (monotonic).
        self.report_at: dict[int, float] = {}
        #: (topic, partition) -> when the balancer last moved it (monotonic): its cooldown. Moves for
        #: other causes (failover, a user's reassignment) are not counted: the balancer may even them out.
        self.last_moved: dict[tuple[str, int], float] = {}
        loaded = self.store.load()
        meta = loaded.meta
        self.cluster_id = meta.get("cluster_id") or uuid.uuid4().hex[:22]
        self.version = int(meta.get("version", 0))
        self.next_stream_id = int(meta.get("next_stream_id", 1))
        self.next_producer_id = int(meta.get("next_producer_id", 1000))
        self.next_takeover_id = int(meta.get("next_takeover_id", 1))
        now = time.monotonic() + session_grace_s
        for bid, zone, host, port, epoch, state, wal in loaded.brokers:
            spec = msgspec.convert(json.loads(wal or "{}"), WalSpec)
            self.brokers[bid] = BrokerRecord(bid, zone, host, port, epoch, state, spec)
            # A restarted controller gives every broker a fresh session before judging liveness.
            self.last_seen[bid] = now
        for tid_, body in loaded.takeovers:
            self.takeovers[tid_] = msgspec.json.decode(body, type=WalTakeover)
        for name, tid, internal, rf, configs in loaded.topics:
            self.topics[name] = TopicRec(name, tid, bool(internal), rf, json.loads(configs), [])
        for topic, *fields in loaded.partitions:
            self.topics[topic].partitions.append(PartitionRec(*fields))
        for topic, idx, body in loaded.snapshots:
            self.snapshots[(topic, idx)] = msgspec.msgpack.decode(body, type=PartitionSnapshot)
        if new_term:
            self.version += LOG_KEEP
        # Followers behind this version get a snapshot: the record log is not persisted.
        self.log_start = self.version
        self.log: deque[tuple[int, dict[str, Any]]] = deque(maxlen=LOG_KEEP)
        self._commit(lambda: None)

    def close(self) -> None:
        self.store.close()

    # --- persistence -------------------------------------------------------------------------

    def _save_meta(self) -> None:
        rows = [
            ("cluster_id", self.cluster_id),
            ("version", str(self.version)),
            ("next_stream_id", str(self.next_stream_id)),
            ("next_producer_id", str(self.next_producer_id)),
            ("next_takeover_id", str(self.next_takeover_id)),
        ]
        self.store.save_meta(rows)

    def _emit(self, record: dict[str, Any]) -> None:
        self.version += 1
        self.log.append((self.version, record))
        if len(self.log) == self.log.maxlen:
            self.log_start = self.log[0][0] - 1

    def _save_broker(self, b: BrokerRecord) -> None:
        self.store.save_broker(
            (b.id, b.zone, b.host, b.port, b.epoch, int(b.alive), b.state, msgspec.json.encode(b.wal).decode())
        )
        self._emit({"type": "broker", **broker_dict(b)})

    def _save_takeover(self, t: WalTakeover) -> None:
        self.store.save_takeover(t.id, msgspec.json.encode(t).decode())
        self._emit({"type": "wal_takeover", **msgspec.to_builtins(t)})

    def _drop_takeover(self, t: WalTakeover) -> None:
        self.store.delete_takeover(t.id)
        del self.takeovers[t.id]
        self._emit({"type": "wal_takeover_done", "id": t.id, "wal_id": t.wal_id})

    def _save_topic(self, t: TopicRec) -> None:
        self.store.save_topic(
            (t.name, t.id, int(t.internal), t.replication_factor, json.dumps(t.configs)),
            [
                (t.name, p.index, p.leader, p.leader_epoch, p.stream_id, p.target, p.move_id, p.snapshot_end)
                for p in t.partitions
            ],
        )
        self._emit({"type": "topic", **t.to_dict()})

    def _commit(self, fn: Any) -> Any:
        """Run a mutation in one transaction of the store. Memory is changed before the commit:
        if it fails, this state must be thrown away and loaded again (the controller server
        does that when it loses its lease)."""
        self.store.begin()
        try:
            out = fn()
            self._save_meta()
        except BaseException:
            self.store.rollback()
            raise
        self.store.commit()
        return out

    # --- reads -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "brokers": [broker_dict(b) for b in sorted(self.brokers.values(), key=lambda b: b.id)],
            "topics": [t.to_dict() for t in self.topics.values()],
            "wal_takeovers": [msgspec.to_builtins(t) for t in self.takeovers.values()],
            # Streams below it that no topic names belong to deleted topics (their data is collected).
            "next_stream_id": self.next_stream_id,
        }

    def changes_since(self, since: int) -> dict[str, Any]:
        if since <= 0 or since < self.log_start or since > self.version:
            return {"version": self.version, "snapshot": self.snapshot()}
        return {"version": self.version, "records": [r for v, r in self.log if v > since]}

    def alive_brokers(self) -> list[BrokerRecord]:
        return sorted((b for b in self.brokers.values() if b.alive), key=lambda b: b.id)

    def partitions_led(self) -> Counter[int]:
        return Counter(p.leader for t in self.topics.values() for p in t.partitions)

    def _led_by(self, leader: int) -> list[tuple[TopicRec, PartitionRec]]:
        return [(t, p) for t in self.topics.values() for p in t.partitions if p.leader == leader]

    def _save_topics_of(self, parts: list[tuple[TopicRec, PartitionRec]]) -> None:
        for t in {t.name: t for t, _ in parts}.values():
            self._save_topic(t)

    # --- brokers -----------------------------------------------------------------------------

    def register_broker(
        self, broker_id: int, zone: str, host: str, port: int, wal: WalSpec | None = None
    ) -> tuple[BrokerRecord, bool]:
        """A new incarnation: `starting` until broker_ready. Returns it and whether a survivor
        is still uploading its WAL (then the broker must wait before it recovers that WAL)."""
        wal = wal or WalSpec(wal_id=f"broker-{broker_id}")

        def tx() -> tuple[BrokerRecord, bool]:
            old = self.brokers.get(broker_id)
            b = BrokerRecord(broker_id, zone, host, port, (old.epoch + 1) if old else 1, "starting", wal, time.time())
            self.brokers[broker_id] = b
            self.last_seen[broker_id] = time.monotonic()
            self.lost_at.pop(broker_id, None)
            self.stopping = False
            self._save_broker(b)
            busy = False
            for t in list(self.takeovers.values()):
                if t.wal_id != wal.wal_id:
                    continue
                if t.state == "waiting":
                    # Nobody else could reach it: the broker recovers its own WAL, as after a restart.
                    self._drop_takeover(t)
                else:
                    busy = True
            return b, busy

        result: tuple[BrokerRecord, bool] = self._commit(tx)
        return result

    def broker_ready(self, broker_id: int, epoch: int) -> int:
        """The broker recovered its WAL: it leads again what it led (at new epochs), and takes
        partitions nobody leads. Returns how many partitions it got."""
        b = self._current(broker_id, epoch)

        def tx() -> int:
            b.state, b.since = "running", time.time()
            self._save_broker(b)
            mine = self._led_by(broker_id)
            homeless = [(t, p) for t in self.topics.values() for p in t.partitions if p.leader < 0]
            for _, p in mine:
                # A new incarnation opens its streams at a new epoch, which fences any older one.
                p.leader_epoch += 1
            self._move(homeless, exclude=set())
            self._save_topics_of(mine + homeless)
            return len(mine) + len(homeless)

        result: int = self._commit(tx)
        return result

    def _current(self, broker_id: int, epoch: int) -> BrokerRecord:
        b = self.brokers.get(broker_id)
        if b is None:
            raise KeyError("BROKER_ID_NOT_REGISTERED")
        if b.epoch != epoch or b.state == "fenced":
            raise KeyError("STALE_BROKER_EPOCH")
        return b

    def heartbeat(
        self, broker_id: int, epoch: int, loads: list[LoadReport] | None = None, relay_floor_ms: int = -1
    ) -> BrokerRecord:
        b = self._current(broker_id, epoch)
        self.last_seen[broker_id] = time.monotonic()
        self.relay_floors[broker_id] = (epoch, relay_floor_ms)
        self.lost_at.pop(broker_id, None)
        if loads is not None:
            reported = {(r.topic, r.partition) for r in loads}
            # A partition it leads and did not report was idle. One that moved away keeps its last
            # load until its new leader reports: planning as if it carried nothing would undo the move.
            for t, p in self._led_by(broker_id):
                if (t.name, p.index) not in reported:
                    self.loads.pop((t.name, p.index), None)
            for r in loads:
                self.loads[(r.topic, r.partition)] = r
            self.report_at[broker_id] = time.monotonic()
        return b

    def relay_horizon(self) -> int:
        """Relay objects older than this are needed by no WAL (docs/zones.md); -1 while unknown.

        Each live broker's floor only grows, so a stale one is only more careful. A dead broker's
        WAL may refer to any relay object until a survivor has taken it over.
        """
        if self.takeovers:
            return -1
        floors = []
        for b in self.brokers.values():
            if not b.alive:
                continue
            epoch, floor = self.relay_floors.get(b.id, (-1, -1))
            if epoch != b.epoch or floor < 0:
                return -1
            floors.append(floor)
        return min(floors, default=-1)

    def forget_broker(self, broker_id: int) -> None:
        """Drop a broker that left for good (scale in): it must be stopped and lead nothing."""
        b = self.brokers.get(broker_id)
        if b is None:
            raise KeyError("BROKER_ID_NOT_REGISTERED")
        if b.state not in ("shutdown", "fenced") or self._led_by(broker_id):
            raise KeyError("BROKER_STILL_IN_USE")
        if any(t.from_broker == broker_id for t in self.takeovers.values()):
            raise KeyError("BROKER_STILL_IN_USE")

        def tx() -> None:
            self.store.delete_broker(broker_id)
            del self.brokers[broker_id]
            self.last_seen.pop(broker_id, None)
            self._emit({"type": "broker_removed", "id": broker_id})

        self._commit(tx)

    def broker_loads(self) -> dict[int, tuple[float, float, float]]:
        """Per broker: (bytes/s in, bytes/s out, requests/s) over the partitions it leads."""
        out: dict[int, tuple[float, float, float]] = {}
        for t in self.topics.values():
            for p in t.partitions:
                r = self.loads.get((t.name, p.index))
                if r is not None:
                    i, o, q = out.get(p.leader, (0.0, 0.0, 0.0))
                    out[p.leader] = (i + r.bytes_in, o + r.bytes_out, q + r.requests)
        return out

    def connection_lost(self, broker_ids: set[int]) -> None:
        now = time.monotonic()
        for bid in broker_ids:
            b = self.brokers.get(bid)
            if b is not None and b.state in ("starting", "running"):
                self.lost_at[bid] = now

    def expire(self, session_timeout_s: float, lost_grace_s: float | None = None) -> list[int]:
        """Fence brokers that missed their heartbeats and hand their WALs to survivors.

        A broker whose session connection closed and that has not been heard from for
        `lost_grace_s` is fenced without waiting for the whole session timeout: a process
        that died on its host closes its connections, one that hangs or is cut off does not.
        """
        now = time.monotonic()
        grace = session_timeout_s if lost_grace_s is None else min(lost_grace_s, session_timeout_s)

        def silent(b: BrokerRecord) -> bool:
            quiet = now - self.last_seen.get(b.id, now)
            lost = self.lost_at.get(b.id)
            return quiet > session_timeout_s or (lost is not None and now - lost > grace)

        dead = [b for b in self.brokers.values() if b.state in ("starting", "running") and silent(b)]
        for b in dead:
            self.lost_at.pop(b.id, None)
        if dead:
            self._commit(lambda: [self._fence(b) for b in dead])
        self._reassign_takeovers()
        return [b.id for b in dead]

    def _fence(self, b: BrokerRecord) -> None:
        # The bumped epoch refuses the old incarnation's heartbeats; its partitions stay offline
        # until a survivor has uploaded what its WAL holds (a write acknowledged from that WAL
        # must be in S3 before anyone else appends after it).
        b.state, b.since = "fenced", time.time()
        b.epoch += 1
        self._save_broker(b)
        streams = {p.stream_id: p.leader_epoch for _, p in self._led_by(b.id)}
        t = WalTakeover(self.next_takeover_id, b.wal.wal_id, b.id, b.wal, streams=streams)
        self.next_takeover_id += 1
        self.takeovers[t.id] = t
        self._assign_takeover(t)
        self._save_takeover(t)

    def _assign_takeover(self, t: WalTakeover) -> None:
        """Pick a survivor that can reach the WAL: any zone for nfs and s3, the same zone for file."""
        load = Counter(x.to_broker for x in self.takeovers.values() if x.state == "pending")
        zone = self.brokers[t.from_broker].zone
        candidates = [
            b for b in self.alive_brokers() if b.id != t.from_broker and (t.wal.kind != "file" or b.zone == zone)
        ]
        if candidates:
            led = self.partitions_led()
            best = min(candidates, key=lambda b: (load[b.id], led[b.id], b.id))
            t.to_broker, t.state, t.reason = best.id, "pending", ""
        else:
            t.to_broker, t.state = -1, "waiting"
            t.reason = (
                f"its file WAL is a volume of zone {zone}, where no broker is running"
                if t.wal.kind == "file"
                else "no broker is running"
            )

    def _reassign_takeovers(self) -> None:
        stale = [
            t for t in self.takeovers.values()
            if (t.state == "pending" and not self.running(t.to_broker)) or t.state == "waiting"
        ]  # fmt: skip
        changed = []
        for t in stale:
            before = (t.to_broker, t.state)
            self._assign_takeover(t)
            if (t.to_broker, t.state) != before:
                changed.append(t)
        if changed:
            self._commit(lambda: [self._save_takeover(t) for t in changed])

    def running(self, broker_id: int) -> bool:
        b = self.brokers.get(broker_id)
        return b is not None and b.alive

    def wal_taken_over(self, broker_id: int, epoch: int, takeover_id: int, stream_epochs: dict[int, int]) -> int:
        """A survivor uploaded a dead broker's WAL: its partitions reopen, spread over running brokers."""
        self._current(broker_id, epoch)
        t = self.takeovers.get(takeover_id)
        if t is None or t.to_broker != broker_id:
            raise KeyError("UNKNOWN_TAKEOVER")

        def tx() -> int:
            self._drop_takeover(t)
            orphans = self._led_by(t.from_broker)
            for _, p in orphans:
                # The survivor opened the streams it fenced at these epochs; a leader must not open older.
                p.leader_epoch = max(p.leader_epoch, stream_epochs.get(p.stream_id, -1) - 1)
            self._move(orphans, exclude={t.from_broker})
            self._save_topics_of(orphans)
            return len(orphans)

        result: int = self._commit(tx)
        return result

    def controlled_shutdown(self, broker_id: int, epoch: int, snapshots: list[PartitionSnapshot] | None = None) -> int:
        """The broker uploaded its WAL and takes no more appends: its partitions move to running
        brokers (unless the whole cluster is stopping). Returns how many moved."""
        b = self._current(broker_id, epoch)

        def tx() -> int:
            b.state, b.since = "shutdown", time.time()
            self._save_broker(b)
            for snap in snapshots or ():
                self._keep_snapshot(snap)
            if self.stopping:
                return 0
            mine = self._led_by(broker_id)
            moved = self._move(mine, exclude={broker_id})
            self._save_topics_of(mine)
            return moved

        result: int = self._commit(tx)
        return result

    def _move(self, parts: list[tuple[TopicRec, PartitionRec]], exclude: set[int]) -> int:
        """New leaders for `parts`, spread over running brokers; each gets a new leader epoch."""
        if not parts:
            return 0
        leaders = self._place(len(parts), exclude)
        moved = 0
        for (t, p), leader in zip(parts, leaders, strict=True):
            self._end_move(t, p, "failed", f"broker {p.leader} left; the partition went to broker {leader}")
            if leader < 0:
                continue  # nobody to lead it: offline until a broker is ready
            p.leader = leader
            p.leader_epoch += 1
            moved += 1
        return moved

    # --- moves (reassignment) ------------------------------------------------------------------

    def _keep_snapshot(self, snap: PartitionSnapshot) -> None:
        t = self.topics.get(snap.topic)
        if t is None or not 0 <= snap.partition < len(t.partitions):
            return
        p = t.partitions[snap.partition]
        if p.stream_id != snap.stream_id or snap.end_offset < p.snapshot_end:
            return  # from an older life of the partition, or older than the one kept
        key = (snap.topic, snap.partition)
        self.snapshots[key] = snap
        p.snapshot_end = snap.end_offset
        self.store.save_snapshot(*key, msgspec.msgpack.encode(snap))

    def _end_move(self, t: TopicRec, p: PartitionRec, state: str, reason: str = "") -> None:
        """Forget the partition's move (if any) with its final state."""
        if p.move_id >= 0:
            m = self.moves.get(p.move_id)
            if m is not None and m.state in ("releasing", "opening"):
                m.state, m.reason = state, reason  # type: ignore[assignment]
        p.target = -1
        p.move_id = -1

    def reassign(
        self, moves: list[tuple[str, int, int]], cause: str = "reassign"
    ) -> tuple[list[tuple[str, int, str, str]], list[int]]:
        """Start moving partitions; target -1 cancels a move that has not been released yet.

        Checks everything first: a request with any bad move starts none of its moves
        (a user's plan is applied whole or not at all). Returns per-move (topic, partition,
        error name or "", message) and the ids of the moves started.
        """
        results: list[tuple[str, int, str, str]] = []
        ok: list[tuple[TopicRec, PartitionRec, int]] = []
        seen: set[tuple[str, int]] = set()
        for topic, index, target in moves:
            err = self._check_move(topic, index, target, seen)
            results.append((topic, index, *err) if err else (topic, index, "", ""))
            if err is None:
                t = self.topics[topic]
                ok.append((t, t.partitions[index], target))
            seen.add((topic, index))
        if len(ok) != len(moves):
            for i, r in enumerate(results):
                if not r[2]:
                    results[i] = (
                        r[0],
                        r[1],
                        "REASSIGNMENT_ABORTED",
                        "not started: another move in the request was refused",
                    )
            return results, []
        started: list[int] = []
        now = int(time.time() * 1000)

        def tx() -> None:
            touched = []
            for t, p, target in ok:
                if target < 0:
                    self._end_move(t, p, "cancelled", "cancelled before the old leader released it")
                elif target == p.leader and p.target < 0:
                    continue  # already there
                elif target == p.leader:
                    self._end_move(t, p, "cancelled", f"moved back to broker {target} before release")
                else:
                    if p.move_id >= 0 and p.target >= 0:
                        self._end_move(t, p, "cancelled", f"replaced by a move to broker {target}")
                    m = MoveRecord(self.next_move_id, t.name, p.index, p.leader, target, cause=cause, requested_ms=now)
                    self.next_move_id += 1
                    self.moves[m.id] = m
                    p.target, p.move_id = target, m.id
                    started.append(m.id)
                touched.append((t, p))
            self._save_topics_of(touched)
            while len(self.moves) > MOVES_KEEP:
                del self.moves[next(iter(self.moves))]

        self._commit(tx)
        return results, started

    def _check_move(self, topic: str, index: int, target: int, seen: set[tuple[str, int]]) -> tuple[str, str] | None:
        t = self.topics.get(topic)
        if t is None:
            return "UNKNOWN_TOPIC_OR_PARTITION", f"topic {topic!r} does not exist"
        if not 0 <= index < len(t.partitions):
            return "UNKNOWN_TOPIC_OR_PARTITION", f"topic {topic} has no partition {index} (it has {len(t.partitions)})"
        if (topic, index) in seen:
            return "INVALID_REQUEST", f"{topic}-{index} appears twice in the request"
        p = t.partitions[index]
        if target < 0:
            if p.target < 0:
                return "NO_REASSIGNMENT_IN_PROGRESS", f"{topic}-{index} is not being moved"
            return None
        b = self.brokers.get(target)
        if b is None:
            return "INVALID_REPLICA_ASSIGNMENT", f"broker {target} does not exist"
        if not b.alive:
            return "INVALID_REPLICA_ASSIGNMENT", f"broker {target} is not running (it is {b.state})"
        if not self.running(p.leader):
            state = self.brokers[p.leader].state if p.leader in self.brokers else "gone"
            return (
                "LEADER_NOT_AVAILABLE",
                f"{topic}-{index}'s leader, broker {p.leader}, is not running (it is {state}): "
                "it cannot release the partition; it moves once its WAL has been taken over",
            )
        return None

    def partitions_released(self, broker_id: int, epoch: int, released: list[Released]) -> int:
        """The old leader takes no appends for these partitions and their WAL tails are in S3:
        each opens on its target at the next leader epoch. Returns how many moved."""
        self._current(broker_id, epoch)
        now = int(time.time() * 1000)

        def tx() -> int:
            touched = []
            for r in released:
                t = self.topics.get(r.topic)
                if t is None or not 0 <= r.partition < len(t.partitions):
                    continue
                p = t.partitions[r.partition]
                if p.leader != broker_id or p.leader_epoch != r.leader_epoch or p.target < 0:
                    continue  # moved or cancelled meanwhile: the broker reopens it if it still leads it
                if r.snapshot is not None:
                    self._keep_snapshot(r.snapshot)
                # A target that stopped meanwhile: the partition stays, reopened by its leader at a new epoch.
                p.leader = p.target if self.running(p.target) else broker_id
                p.leader_epoch += 1
                p.target = -1
                m = self.moves.get(p.move_id)
                if m is not None and m.cause in ("balancer", "balance"):
                    self.last_moved[(r.topic, r.partition)] = time.monotonic()
                if m is not None:
                    m.drained_ms, m.released_ms, m.moved_ms = r.drained_ms, r.released_ms, now
                    m.uploaded_bytes = r.uploaded_bytes
                    m.state = "opening"
                    if p.leader != m.target:
                        m.reason = f"broker {m.target} stopped during the move; broker {p.leader} keeps the partition"
                touched.append((t, p))
            self._save_topics_of(touched)
            return len(touched)

        result: int = self._commit(tx)
        return result

    def partition_opened(
        self, broker_id: int, move_id: int, topic: str, index: int, leader_epoch: int, opened_ms: int,
        first_append_ms: int, from_snapshot: bool,
    ) -> None:  # fmt: skip
        """The new leader opened a moved partition (first_append_ms: and acknowledged a produce)."""
        m = self.moves.get(move_id)
        if m is not None and m.target == broker_id:
            m.opened_ms, m.from_snapshot = opened_ms, from_snapshot
            m.first_append_ms = first_append_ms or m.first_append_ms
            if m.state == "opening":
                m.state = "done"
        t = self.topics.get(topic)
        if t is None or not 0 <= index < len(t.partitions):
            return
        p = t.partitions[index]
        if p.leader == broker_id and p.leader_epoch == leader_epoch and p.move_id == move_id and p.target < 0:
            p.move_id = -1
            self._commit(lambda: self._save_topic(t))

    def moves_in_progress(self) -> list[tuple[TopicRec, PartitionRec]]:
        return [(t, p) for t in self.topics.values() for p in t.partitions if p.target >= 0]

    # --- topics ------------------------------------------------------------------------------

    def _place(self, count: int, exclude: set[int] | None = None) -> list[int]:
        """Leaders for `count` new partitions: zones take turns (starting with the least loaded
        zone), and within a zone the broker leading the fewest partitions gets the next one."""
        alive = [b for b in self.alive_brokers() if b.id not in (exclude or ())]
        if not alive:
            return [-1] * count
        load = self.partitions_led()
        zones = sorted({b.zone for b in alive})
        by_zone = {z: [b for b in alive if b.zone == z] for z in zones}
        zone_load = {z: sum(load[b.id] for b in by_zone[z]) / len(by_zone[z]) for z in zones}
        first = min(range(len(zones)), key=lambda i: (zone_load[zones[i]], i))
        out = []
        for i in range(count):
            zone = zones[(first + i) % len(zones)]
            b = min(by_zone[zone], key=lambda b: (load[b.id], b.id))
            load[b.id] += 1
            out.append(b.id)
        return out

    def _new_partitions(self, leaders: list[int], first_index: int) -> list[PartitionRec]:
        parts = []
        for i, leader in enumerate(leaders):
            parts.append(PartitionRec(first_index + i, leader, 0, self.next_stream_id))
            self.next_stream_id += 1
        return parts

    def _check_assignments(self, assignments: list[list[int]]) -> list[int]:
        leaders = []
        for replicas in assignments:
            if not replicas or len(set(replicas)) != len(replicas):
                raise ConfigError(ErrorCode.INVALID_REPLICA_ASSIGNMENT, "a partition needs distinct broker ids")
            unknown = [r for r in replicas if r not in self.brokers]
            if unknown:
                raise ConfigError(ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"unknown broker ids {unknown}")
            leaders.append(replicas[0])
        return leaders

    def _validate_new_topic(self, spec: dict[str, Any], internal: bool, pending: set[str]) -> TopicRec:
        name = spec.get("name")
        validate_topic_name(name)
        assert isinstance(name, str)
        if name in self.topics or name in pending:
            raise ConfigError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        if not internal and name in RESERVED_INTERNAL:
            raise ConfigError(ErrorCode.INVALID_REQUEST, f"creation of internal topic {name} is prohibited")
        key = collision_key(name)
        for other in [*self.topics, *pending]:
            if collision_key(other) == key:
                raise ConfigError(
                    ErrorCode.INVALID_TOPIC_EXCEPTION,
                    f"topic {name!r} collides with existing topic {other!r} ('.' and '_' are the same in metrics)",
                )
        n = int(spec.get("num_partitions", 1))
        rf = int(spec.get("replication_factor", 1))
        assignments = spec.get("assignments") or {}
        if assignments:
            if n != -1 or rf != -1:
                raise ConfigError(
                    ErrorCode.INVALID_REQUEST,
                    "both num_partitions/replication_factor and replica assignments were given",
                )
            indices = sorted(int(i) for i in assignments)
            if indices != list(range(len(indices))):
                raise ConfigError(ErrorCode.INVALID_REPLICA_ASSIGNMENT, "partitions must be numbered 0..n-1")
            leaders = self._check_assignments([list(assignments[str(i)]) for i in indices])
            rf = len(assignments[str(indices[0])])
            n = len(indices)
        else:
            if n <= 0:
                raise ConfigError(ErrorCode.INVALID_PARTITIONS, f"number of partitions must be positive, got {n}")
            if n > MAX_PARTITIONS_PER_REQUEST:
                raise ConfigError(
                    ErrorCode.INVALID_PARTITIONS, f"{n} partitions is over the limit of {MAX_PARTITIONS_PER_REQUEST}"
                )
            if rf <= 0 or rf > 32767:
                raise ConfigError(ErrorCode.INVALID_REPLICATION_FACTOR, f"replication factor {rf} is not positive")
            alive = len(self.alive_brokers())
            if rf > alive:
                raise ConfigError(
                    ErrorCode.INVALID_REPLICATION_FACTOR,
                    f"replication factor {rf} is larger than the number of available brokers ({alive})",
                )
            leaders = []
        configs = validate_configs({str(k): v for k, v in (spec.get("configs") or {}).items()})
        # Stream ids are taken only when the topic is really created.
        t = TopicRec(name, str(uuid.uuid4()), internal, rf, configs, [])
        t.partitions = [PartitionRec(i, leader, 0, -1) for i, leader in enumerate(leaders or [-2] * n)]
        return t

    def create_topics(self, specs: list[dict[str, Any]], validate_only: bool, internal: bool) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        created: list[TopicRec] = []
        pending: set[str] = set()
        for spec in specs:
            name = str(spec.get("name"))
            try:
                t = self._validate_new_topic(spec, internal, pending)
            except ConfigError as e:
                results.append(_result(name, e.code, str(e)))
                continue
            pending.add(name)
            created.append(t)
            results.append(_result(name, topic=None))
        if validate_only or not created:
            for r in results:
                if r["error_code"] == 0:
                    r["topic"] = None
            return results

        def tx() -> None:
            for t in created:
                leaders = [p.leader for p in t.partitions]
                if leaders and leaders[0] == -2:
                    leaders = self._place(len(leaders))
                t.partitions = self._new_partitions(leaders, 0)
                self.topics[t.name] = t
                self._save_topic(t)

        try:
            self._commit(tx)
        except BaseException:
            for t in created:
                self.topics.pop(t.name, None)
            raise
        by_name = {t.name: t for t in created}
        for r in results:
            if r["name"] in by_name:
                r["topic"] = by_name[r["name"]].to_dict()
        return results

    def delete_topics(self, names: list[str]) -> list[dict[str, Any]]:
        results = []
        doomed: list[TopicRec] = []
        for name in names:
            t = self.topics.get(name)
            if t is None:
                results.append(_result(name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"))
            elif t.internal:
                results.append(_result(name, ErrorCode.INVALID_REQUEST, f"internal topic {name} cannot be deleted"))
            elif t in doomed:
                results.append(_result(name, topic_id=t.id))
            else:
                doomed.append(t)
                results.append(_result(name, topic_id=t.id))

        def tx() -> None:
            for t in doomed:
                self.store.delete_topic(t.name)
                for p in t.partitions:
                    self.snapshots.pop((t.name, p.index), None)
                del self.topics[t.name]
                self._emit({"type": "topic_deleted", "name": t.name, "id": t.id})

        if doomed:
            self._commit(tx)
        return results

    def create_partitions(self, specs: list[dict[str, Any]], validate_only: bool) -> list[dict[str, Any]]:
        results = []
        grow: list[tuple[TopicRec, int, list[int]]] = []
        for spec in specs:
            name = str(spec.get("name"))
            try:
                t = self.topics.get(name)
                if t is None:
                    raise ConfigError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
                if t.internal:
                    raise ConfigError(ErrorCode.INVALID_REQUEST, f"internal topic {name} cannot be changed")
                count = int(spec.get("count", 0))
                have = len(t.partitions)
                if count <= have:
                    raise ConfigError(
                        ErrorCode.INVALID_PARTITIONS,
                        f"topic {name} has {have} partitions, which is not fewer than the requested {count}",
                    )
                if count - have > MAX_PARTITIONS_PER_REQUEST:
                    raise ConfigError(ErrorCode.INVALID_PARTITIONS, f"{count} partitions is over the limit")
                assignments = spec.get("assignments")
                if assignments:
                    if len(assignments) != count - have:
                        raise ConfigError(
                            ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                            f"{len(assignments)} assignments given for {count - have} new partitions",
                        )
                    leaders = self._check_assignments([list(a) for a in assignments])
                else:
                    if not self.alive_brokers():
                        raise ConfigError(ErrorCode.INVALID_REPLICATION_FACTOR, "no broker is available")
                    leaders = []
                grow.append((t, count, leaders))
                results.append(_result(name))
            except ConfigError as e:
                results.append(_result(name, e.code, str(e)))
        if validate_only or not grow:
            return results

        def tx() -> None:
            for t, count, leaders in grow:
                have = len(t.partitions)
                t.partitions.extend(self._new_partitions(leaders or self._place(count - have), have))
                self._save_topic(t)

        self._commit(tx)
        return results

    def alter_configs(
        self, resources: list[dict[str, Any]], incremental: bool, validate_only: bool
    ) -> list[dict[str, Any]]:
        results = []
        changes: list[tuple[TopicRec, dict[str, str]]] = []
        for res in resources:
            name = str(res.get("name"))
            try:
                t = self.topics.get(name)
                if t is None:
                    raise ConfigError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
                changes.append((t, apply_ops(t.configs, list(res.get("ops") or []), incremental)))
                results.append(_result(name))
            except ConfigError as e:
                results.append(_result(name, e.code, str(e)))
        if validate_only or not changes:
            return results

        def tx() -> None:
            for t, configs in changes:
                t.configs = configs
                self._save_topic(t)

        self._commit(tx)
        return results

    # --- producer ids ------------------------------------------------------------------------

    def alloc_producer_ids(self, count: int) -> int:
        count = max(1, min(count, 1_000_000))

        def tx() -> int:
            first = self.next_producer_id
            self.next_producer_id += count
            return first

        result: int = self._commit(tx)
        return result
