"""Group and member state of the classic group protocol (Kafka's GroupMetadata/MemberMetadata).

Plain data plus the small queries the coordinator's state machine asks of it; no
I/O, no timers. The transitions themselves live in ``coordinator.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from engine.broker.groups.timers import TimerHandle
from engine.protocol import ErrorCode


class GroupState(Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


# Kafka's GroupMetadata.validPreviousStates.
_VALID_PREVIOUS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.DEAD: frozenset(GroupState),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.STABLE: frozenset({GroupState.COMPLETING_REBALANCE}),
    GroupState.PREPARING_REBALANCE: frozenset({GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY}),
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
}


@dataclass(slots=True)
class MemberInfo:
    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(slots=True)
class JoinResult:
    error: ErrorCode
    member_id: str = ""
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str = ""
    members: list[MemberInfo] = field(default_factory=list)


@dataclass(slots=True)
class SyncResult:
    error: ErrorCode
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


JoinCallback = Callable[[JoinResult], None]
SyncCallback = Callable[[SyncResult], None]
Protocols = list[tuple[str, bytes]]


@dataclass(slots=True, eq=False)
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    protocol_type: str
    protocols: Protocols
    assignment: bytes = b""
    #: Set while a JoinGroup is parked; "awaiting join" in Kafka's terms.
    join_callback: JoinCallback | None = None
    #: Set while a SyncGroup is parked.
    sync_callback: SyncCallback | None = None
    #: Joined without a member id and not yet through a join phase: expires on the
    #: new-member timeout, not the session timeout (it cannot heartbeat yet).
    is_new: bool = False
    heartbeat_timer: TimerHandle | None = None

    @property
    def is_static(self) -> bool:
        return self.group_instance_id is not None

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata(self, protocol: str | None) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""

    def matches(self, protocols: Protocols) -> bool:
        return self.protocols == protocols

    def vote(self, candidates: set[str]) -> str:
        for name, _ in self.protocols:
            if name in candidates:
                return name
        raise ValueError(f"member {self.member_id} supports none of {sorted(candidates)}")

    def respond_join(self, result: JoinResult) -> None:
        cb, self.join_callback = self.join_callback, None
        if cb is not None:
            cb(result)

    def respond_sync(self, result: SyncResult) -> None:
        cb, self.sync_callback = self.sync_callback, None
        if cb is not None:
            cb(result)

    def cancel_heartbeat(self) -> None:
        if self.heartbeat_timer is not None:
            self.heartbeat_timer.cancel()
            self.heartbeat_timer = None


@dataclass(slots=True)
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int
    #: Where in the log this value was written: a later write always wins, even if
    #: appends complete out of order.
    log_offset: int = -1


@dataclass(slots=True, eq=False)
class Group:
    group_id: str
    partition: int
    state: GroupState = GroupState.EMPTY
    state_timestamp_ms: int = -1
    generation_id: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    #: Insertion ordered: the first member is the natural next leader.
    members: dict[str, Member] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)
    #: Member ids handed out with MEMBER_ID_REQUIRED, awaiting the member's second join.
    pending_members: dict[str, TimerHandle] = field(default_factory=dict)
    #: Members that got their join response but have not sent SyncGroup yet.
    pending_sync: set[str] = field(default_factory=set)
    offsets: dict[tuple[str, int], CommittedOffset] = field(default_factory=dict)
    join_timer: TimerHandle | None = None
    sync_timer: TimerHandle | None = None
    #: False once the group's partition is unloaded or the group is deleted: timers and
    #: storage completions for it are then ignored.
    active: bool = True

    def transition(self, state: GroupState, now_ms: int) -> None:
        if self.state not in _VALID_PREVIOUS[state]:
            raise AssertionError(f"group {self.group_id}: illegal transition {self.state.value} -> {state.value}")
        self.state = state
        self.state_timestamp_ms = now_ms

    def is_(self, state: GroupState) -> bool:
        return self.state is state

    def can_rebalance(self) -> bool:
        return self.state in _VALID_PREVIOUS[GroupState.PREPARING_REBALANCE]

    def is_leader(self, member_id: str) -> bool:
        return self.leader_id == member_id

    def add(self, member: Member) -> None:
        if not self.members:
            self.protocol_type = member.protocol_type
        self.members[member.member_id] = member
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = member.member_id
        if self.leader_id is None:
            self.leader_id = member.member_id

    def remove(self, member_id: str) -> Member | None:
        member = self.members.pop(member_id, None)
        if member is None:
            return None
        member.cancel_heartbeat()
        if member.group_instance_id is not None and self.static_members.get(member.group_instance_id) == member_id:
            del self.static_members[member.group_instance_id]
        self.pending_sync.discard(member_id)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)
        return member

    def replace_static_member(self, instance_id: str, old_id: str, new_id: str) -> Member:
        """Give the static member ``instance_id`` a new member id, keeping its place and assignment."""
        old = self.members[old_id]
        old.cancel_heartbeat()
        # Keep dict order (and with it leader succession) as it was.
        self.members = {(new_id if k == old_id else k): v for k, v in self.members.items()}
        old.member_id = new_id
        self.static_members[instance_id] = new_id
        if self.leader_id == old_id:
            self.leader_id = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        return old

    def validate_member(self, member_id: str, instance_id: str | None) -> ErrorCode:
        """Kafka's validateCurrentMember: the instance id maps to ``member_id``, which exists."""
        if instance_id is not None:
            current = self.static_members.get(instance_id)
            if current is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            if current != member_id:
                return ErrorCode.FENCED_INSTANCE_ID
        if member_id not in self.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        return ErrorCode.NONE

    def supports_protocols(self, protocol_type: str, protocols: Protocols) -> bool:
        if not self.members:
            return bool(protocol_type) and bool(protocols)
        if protocol_type != self.protocol_type:
            return False
        supported = self.candidate_protocols()
        return any(name in supported for name, _ in protocols)

    def candidate_protocols(self) -> set[str]:
        """Protocols every member supports."""
        counts: Counter[str] = Counter()
        for m in self.members.values():
            counts.update(set(m.protocol_names()))
        return {name for name, n in counts.items() if n == len(self.members)}

    def select_protocol(self) -> str:
        candidates = self.candidate_protocols()
        if not candidates:
            raise ValueError(f"group {self.group_id}: no protocol supported by every member")
        votes: Counter[str] = Counter(m.vote(candidates) for m in self.members.values())
        # Counter keeps first-seen order, so ties go to the earliest member's choice.
        return max(votes, key=lambda name: votes[name])

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def awaiting_join_count(self) -> int:
        return sum(1 for m in self.members.values() if m.join_callback is not None)

    def has_all_members_joined(self) -> bool:
        return self.awaiting_join_count() == len(self.members) and not self.pending_members

    def not_yet_rejoined(self) -> list[Member]:
        return [m for m in self.members.values() if m.join_callback is None]

    def member_infos(self) -> list[MemberInfo]:
        name = self.protocol_name
        return [MemberInfo(m.member_id, m.group_instance_id, m.metadata(name)) for m in self.members.values()]
