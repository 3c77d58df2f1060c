"""The broker's copy of the controller's metadata, kept current by following its version log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.controller.api import BrokerRecord, WalTakeover
from engine.controller.configs import TOPIC_CONFIGS


@dataclass(slots=True)
class PartitionInfo:
    index: int
    leader: int
    leader_epoch: int
    stream_id: int
    #: Being moved to this broker (the leader releases it first); -1 when not moving.
    target: int = -1
    #: A move that the new leader has not yet reported open.
    move_id: int = -1
    #: The controller keeps a leader snapshot up to this offset (-1: none): load it instead of scanning.
    snapshot_end: int = -1


@dataclass(slots=True)
class TopicInfo:
    name: str
    id: uuid.UUID
    internal: bool
    replication_factor: int
    configs: dict[str, str]
    partitions: list[PartitionInfo] = field(default_factory=list)

    def config(self, name: str) -> str:
        if name in self.configs:
            return self.configs[name]
        return TOPIC_CONFIGS[name].default or ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopicInfo:
        return cls(
            name=d["name"],
            id=uuid.UUID(d["id"]),
            internal=bool(d.get("internal")),
            replication_factor=int(d.get("replication_factor", 1)),
            configs=dict(d.get("configs") or {}),
            partitions=[
                PartitionInfo(
                    int(p["index"]),
                    int(p["leader"]),
                    int(p["leader_epoch"]),
                    int(p["stream_id"]),
                    int(p.get("target", -1)),
                    int(p.get("move_id", -1)),
                    int(p.get("snapshot_end", -1)),
                )
                for p in d.get("partitions") or []
            ],
        )


class MetadataImage:
    def __init__(self) -> None:
        self.version = 0
        self.cluster_id = ""
        self.brokers: dict[int, BrokerRecord] = {}
        #: WALs of dead brokers that a survivor must upload (engine/controller/api.py WalTakeover).
        self.takeovers: dict[int, WalTakeover] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.topics_by_id: dict[uuid.UUID, TopicInfo] = {}
        #: The highest stream id any topic known to this image was given; a stream at or below it
        #: that no topic names any more belonged to a deleted topic.
        self.max_stream_id = 0

    def apply(self, changes: dict[str, Any]) -> set[str]:
        """Apply a `metadata` RPC answer; returns the names of topics that changed or went away."""
        touched: set[str] = set()
        snap = changes.get("snapshot")
        if snap is not None:
            touched |= set(self.topics)
            self.cluster_id = snap.get("cluster_id") or self.cluster_id
            self.brokers = {}
            self.topics = {}
            self.topics_by_id = {}
            self.takeovers = {}
            self.max_stream_id = max(self.max_stream_id, int(snap.get("next_stream_id", 1)) - 1)
            for b in snap.get("brokers") or []:
                self._broker(b)
            for t in snap.get("wal_takeovers") or []:
                self._takeover(t)
            for t in snap.get("topics") or []:
                touched.add(self._topic(t))
        for rec in changes.get("records") or []:
            kind = rec.get("type")
            if kind == "broker":
                self._broker(rec)
            elif kind == "topic":
                touched.add(self._topic(rec))
            elif kind == "broker_removed":
                self.brokers.pop(int(rec["id"]), None)
            elif kind == "wal_takeover":
                self._takeover(rec)
            elif kind == "wal_takeover_done":
                self.takeovers.pop(int(rec["id"]), None)
            elif kind == "topic_deleted":
                old = self.topics.pop(rec["name"], None)
                if old is not None:
                    self.topics_by_id.pop(old.id, None)
                touched.add(rec["name"])
        self.version = int(changes.get("version", self.version))
        return touched

    def _broker(self, b: dict[str, Any]) -> None:
        fields = {k: v for k, v in b.items() if k not in ("type", "alive")}
        rec = msgspec.convert(fields, BrokerRecord, strict=False)
        self.brokers[rec.id] = rec

    def _takeover(self, t: dict[str, Any]) -> None:
        rec = msgspec.convert({k: v for k, v in t.items() if k != "type"}, WalTakeover, strict=False)
        self.takeovers[rec.id] = rec

    def _topic(self, t: dict[str, Any]) -> str:
        info = TopicInfo.from_dict(t)
        old = self.topics.get(info.name)
        if old is not None:
            self.topics_by_id.pop(old.id, None)
        self.topics[info.name] = info
        self.topics_by_id[info.id] = info
        self.max_stream_id = max([self.max_stream_id, *(p.stream_id for p in info.partitions)])
        return info.name
