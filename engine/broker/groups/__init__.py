"""Classic consumer groups: the coordinator, its state machine and the __consumer_offsets store.

See docs/groups.md.
"""

from engine.broker.groups.coordinator import (
    OFFSETS_TOPIC,
    GroupConfig,
    GroupCoordinator,
    GroupListing,
    GroupSummary,
    MemberSummary,
    OffsetCommitEntry,
    java_string_hash,
    partition_for,
)
from engine.broker.groups.group import CommittedOffset, GroupState, JoinResult, MemberInfo, SyncResult
from engine.broker.groups.timers import LoopTimers, ManualTimers, Timers

__all__ = [
    "OFFSETS_TOPIC",
    "CommittedOffset",
    "GroupConfig",
    "GroupCoordinator",
    "GroupListing",
    "GroupState",
    "GroupSummary",
    "JoinResult",
    "LoopTimers",
    "ManualTimers",
    "MemberInfo",
    "MemberSummary",
    "OffsetCommitEntry",
    "SyncResult",
    "Timers",
    "java_string_hash",
    "partition_for",
]
