"""The ten group API handlers at every version, through the real codec (bytes in, bytes out)."""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest

from engine.broker.context import RequestContext
from engine.broker.groups import GroupConfig, GroupCoordinator, ManualTimers
from engine.broker.groups.testing import MemoryStreams
from engine.broker.image import PartitionInfo, TopicInfo
from engine.protocol import SUPPORTED_APIS, ApiKey, ErrorCode, RequestHeader, decode_request, encode_response
from engine.protocol.apis import request_header_version
from engine.protocol.codec import decode_response, encode_request
from engine.protocol.messages import (
    DeleteGroupsRequest,
    DescribeGroupsRequest,
    FindCoordinatorRequest,
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    ListGroupsRequest,
    OffsetCommitRequest,
    OffsetFetchRequest,
    SyncGroupRequest,
)
from tests.unit.test_groups import run

MODULES = {
    ApiKey.FIND_COORDINATOR: "find_coordinator",
    ApiKey.JOIN_GROUP: "join_group",
    ApiKey.SYNC_GROUP: "sync_group",
    ApiKey.HEARTBEAT: "heartbeat",
    ApiKey.LEAVE_GROUP: "leave_group",
    ApiKey.OFFSET_COMMIT: "offset_commit",
    ApiKey.OFFSET_FETCH: "offset_fetch",
    ApiKey.LIST_GROUPS: "list_groups",
    ApiKey.DESCRIBE_GROUPS: "describe_groups",
    ApiKey.DELETE_GROUPS: "delete_groups",
}


def versions(key: ApiKey) -> list[int]:
    spec = SUPPORTED_APIS[key]
    return list(range(spec.min_version, spec.max_version + 1))


class FakeBroker:
    node_id = 3
    host = "broker-3.local"
    port = 19092

    def __init__(self, with_groups: bool = True) -> None:
        self.groups: GroupCoordinator | None = None
        if with_groups:
            self.groups = GroupCoordinator(
                config=GroupConfig(offsets_topic_partitions=2),
                timers=ManualTimers(),
                open_stream=MemoryStreams(),
                is_local=lambda _k: True,
            )

    def coordinator_for(self, key: str) -> tuple[int, str, int]:
        return self.node_id, self.host, self.port

    def topic(self, name: str) -> TopicInfo | None:
        """Every topic exists, with 16 partitions led here."""
        parts = [PartitionInfo(i, self.node_id, 0, i) for i in range(16)]
        return TopicInfo(name, uuid.UUID(int=1), False, 1, {}, parts)


async def call(broker: FakeBroker, body: Any, version: int) -> Any:
    """Encode as a client would, decode as the server does, handle, and decode the response bytes."""
    key = ApiKey(body.API_KEY)
    header = RequestHeader(key, version, 41, "test-client", request_header_version(key, version))
    request = decode_request(encode_request(header, body)[4:])
    handler = importlib.import_module(f"engine.broker.handlers.{MODULES[key]}")
    assert key == handler.API_KEY
    ctx = RequestContext(broker, version, 41, "test-client", "/127.0.0.1")  # type: ignore[arg-type]
    response = await handler.handle(ctx, request.body)
    frame = b"".join(bytes(b) for b in encode_response(request.header, response))
    correlation_id, decoded = decode_response(key, version, frame[4:])
    assert correlation_id == 41
    return decoded


async def started(with_groups: bool = True) -> FakeBroker:
    b = FakeBroker(with_groups)
    if b.groups is not None:
        await b.groups.start()
    return b


async def join_and_sync(b: FakeBroker, group: str, jv: int = 7, sv: int = 5) -> tuple[str, int]:
    protocols = [JoinGroupRequest.JoinGroupRequestProtocol("range", b"meta")]
    req = JoinGroupRequest(group, 10_000, 30_000, "", None, "consumer", protocols)
    r = await call(b, req, jv)
    if r.error_code == ErrorCode.MEMBER_ID_REQUIRED:
        req.member_id = r.member_id
        r = await call(b, req, jv)
    assert r.error_code == 0
    s = await call(
        b,
        SyncGroupRequest(group, r.generation_id, r.member_id, None, "consumer", "range",
                         [SyncGroupRequest.SyncGroupRequestAssignment(r.member_id, b"assignment")]),
        sv,
    )  # fmt: skip
    assert s.error_code == 0 and s.assignment == b"assignment"
    return r.member_id, r.generation_id


@pytest.mark.parametrize("v", versions(ApiKey.FIND_COORDINATOR))
@run
async def test_find_coordinator(v: int) -> None:
    b = await started()
    r = await call(b, FindCoordinatorRequest("some-group", 0), v)
    assert (r.error_code, r.node_id, r.host, r.port) == (0, 3, "broker-3.local", 19092)
    if v >= 1:
        r = await call(b, FindCoordinatorRequest("txn-id", 1), v)
        assert r.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE


@pytest.mark.parametrize("v", versions(ApiKey.JOIN_GROUP))
@run
async def test_join_group_every_version(v: int) -> None:
    b = await started()
    protocols = [JoinGroupRequest.JoinGroupRequestProtocol("range", b"meta")]
    first = await call(b, JoinGroupRequest("g", 10_000, 30_000, "", None, "consumer", protocols), v)
    if v >= 4:
        assert first.error_code == ErrorCode.MEMBER_ID_REQUIRED and first.member_id
        first = await call(b, JoinGroupRequest("g", 10_000, 30_000, first.member_id, None, "consumer", protocols), v)
    assert first.error_code == 0
    assert first.generation_id == 1 and first.leader == first.member_id
    assert first.protocol_name == "range"
    assert first.protocol_type == ("consumer" if v >= 7 else None)
    assert [(m.member_id, m.metadata) for m in first.members] == [(first.member_id, b"meta")]
    bad = await call(b, JoinGroupRequest("g", 10_000, 30_000, "nobody", None, "consumer", protocols), v)
    assert bad.error_code == ErrorCode.UNKNOWN_MEMBER_ID and bad.generation_id == -1
    assert bad.protocol_name == ("" if v < 7 else None)


@pytest.mark.parametrize("v", [5, 6, 7])
@run
async def test_join_group_static_member(v: int) -> None:
    b = await started()
    protocols = [JoinGroupRequest.JoinGroupRequestProtocol("range", b"meta")]
    r = await call(b, JoinGroupRequest("g", 10_000, 30_000, "", "inst-1", "consumer", protocols), v)
    assert r.error_code == 0 and r.member_id.startswith("inst-1-")  # no MEMBER_ID_REQUIRED round for static
    assert r.members[0].group_instance_id == "inst-1"


@pytest.mark.parametrize("v", versions(ApiKey.SYNC_GROUP))
@run
async def test_sync_group_every_version(v: int) -> None:
    b = await started()
    member, gen = await join_and_sync(b, "g", sv=v)
    r = await call(b, SyncGroupRequest("g", gen + 1, member, None, None, None, []), v)
    assert r.error_code == ErrorCode.ILLEGAL_GENERATION


@pytest.mark.parametrize("v", versions(ApiKey.HEARTBEAT))
@run
async def test_heartbeat_every_version(v: int) -> None:
    b = await started()
    member, gen = await join_and_sync(b, "g")
    assert (await call(b, HeartbeatRequest("g", gen, member), v)).error_code == 0
    assert (await call(b, HeartbeatRequest("g", gen, "x"), v)).error_code == ErrorCode.UNKNOWN_MEMBER_ID
    assert (await call(b, HeartbeatRequest("g", gen + 1, member), v)).error_code == ErrorCode.ILLEGAL_GENERATION


@pytest.mark.parametrize("v", versions(ApiKey.LEAVE_GROUP))
@run
async def test_leave_group_every_version(v: int) -> None:
    b = await started()
    member, _ = await join_and_sync(b, "g")
    if v < 3:
        assert (await call(b, LeaveGroupRequest("g", "ghost"), v)).error_code == ErrorCode.UNKNOWN_MEMBER_ID
        assert (await call(b, LeaveGroupRequest("g", member), v)).error_code == 0
    else:
        identity = LeaveGroupRequest.MemberIdentity
        r = await call(b, LeaveGroupRequest("g", "", [identity(member, None), identity("ghost", None)]), v)
        assert r.error_code == 0
        assert [(m.member_id, m.error_code) for m in r.members] == [(member, 0), ("ghost", 25)]
    assert b.groups is not None and b.groups.group("g").state.value == "Empty"  # type: ignore[union-attr]


@pytest.mark.parametrize("cv", versions(ApiKey.OFFSET_COMMIT))
@run
async def test_offset_commit_and_fetch_every_version(cv: int) -> None:
    b = await started()
    member, gen = await join_and_sync(b, "g")
    part = OffsetCommitRequest.OffsetCommitRequestPartition
    topic = OffsetCommitRequest.OffsetCommitRequestTopic
    req = OffsetCommitRequest("g", gen, member, None, -1, [topic("t", [part(0, 10, 2, "m0"), part(1, 20, -1, None)])])
    r = await call(b, req, cv)
    assert [(p.partition_index, p.error_code) for t in r.topics for p in t.partitions] == [(0, 0), (1, 0)]
    bad = OffsetCommitRequest("g", gen + 7, member, None, -1, [topic("t", [part(0, 1)])])
    r = await call(b, bad, cv)
    assert r.topics[0].partitions[0].error_code == ErrorCode.ILLEGAL_GENERATION
    for fv in versions(ApiKey.OFFSET_FETCH):
        fetch_topic = OffsetFetchRequest.OffsetFetchRequestTopic
        f = await call(b, OffsetFetchRequest("g", [fetch_topic("t", [0, 1, 5])]), fv)
        rows = [(p.partition_index, p.committed_offset, p.metadata, p.error_code) for p in f.topics[0].partitions]
        assert rows == [(0, 10, "m0", 0), (1, 20, "", 0), (5, -1, "", 0)]
        epoch = f.topics[0].partitions[0].committed_leader_epoch
        assert epoch == (2 if cv >= 6 and fv >= 5 else -1)
        if fv >= 2:
            f = await call(b, OffsetFetchRequest("g", None), fv)
            assert [(t.name, [p.partition_index for p in t.partitions]) for t in f.topics] == [("t", [0, 1])]
            assert f.error_code == 0


@pytest.mark.parametrize("v", versions(ApiKey.LIST_GROUPS))
@run
async def test_list_groups_every_version(v: int) -> None:
    b = await started()
    await join_and_sync(b, "busy")
    member, _ = await join_and_sync(b, "idle")
    await call(b, LeaveGroupRequest("idle", member), 0)
    r = await call(b, ListGroupsRequest(), v)
    assert r.error_code == 0
    got = sorted((g.group_id, g.protocol_type, g.group_state) for g in r.groups)
    want_state = ("Stable", "Empty") if v >= 4 else ("", "")
    assert got == [("busy", "consumer", want_state[0]), ("idle", "consumer", want_state[1])]
    if v >= 4:
        r = await call(b, ListGroupsRequest(["Empty"]), v)
        assert [g.group_id for g in r.groups] == ["idle"]


@pytest.mark.parametrize("v", versions(ApiKey.DESCRIBE_GROUPS))
@run
async def test_describe_groups_every_version(v: int) -> None:
    b = await started()
    member, _ = await join_and_sync(b, "g")
    r = await call(b, DescribeGroupsRequest(["g", "nope"], True), v)
    g, nope = r.groups
    assert (g.error_code, g.group_state, g.protocol_type, g.protocol_data) == (0, "Stable", "consumer", "range")
    (m,) = g.members
    assert (m.member_id, m.client_id, m.client_host, m.member_metadata, m.member_assignment) == (
        member, "test-client", "/127.0.0.1", b"meta", b"assignment",
    )  # fmt: skip
    if v >= 3:
        assert g.authorized_operations == (1 << 3) | (1 << 6) | (1 << 8)
    assert (nope.error_code, nope.group_state, nope.members) == (0, "Dead", [])


@pytest.mark.parametrize("v", versions(ApiKey.DELETE_GROUPS))
@run
async def test_delete_groups_every_version(v: int) -> None:
    b = await started()
    await join_and_sync(b, "busy")
    member, _ = await join_and_sync(b, "idle")
    await call(b, LeaveGroupRequest("idle", member), 0)
    r = await call(b, DeleteGroupsRequest(["busy", "idle", "nope"]), v)
    assert [(x.group_id, x.error_code) for x in r.results] == [
        ("busy", ErrorCode.NON_EMPTY_GROUP),
        ("idle", 0),
        ("nope", ErrorCode.GROUP_ID_NOT_FOUND),
    ]


@run
async def test_without_a_coordinator_every_api_says_coordinator_not_available() -> None:
    b = await started(with_groups=False)
    na = ErrorCode.COORDINATOR_NOT_AVAILABLE
    protocols = [JoinGroupRequest.JoinGroupRequestProtocol("range", b"")]
    assert (await call(b, JoinGroupRequest("g", 10_000, 30_000, "", None, "consumer", protocols), 7)).error_code == na
    assert (await call(b, SyncGroupRequest("g", 1, "m"), 5)).error_code == na
    assert (await call(b, HeartbeatRequest("g", 1, "m"), 4)).error_code == na
    assert (await call(b, LeaveGroupRequest("g", "m"), 0)).error_code == na
    assert (await call(b, ListGroupsRequest(), 4)).error_code == na
    assert (await call(b, DescribeGroupsRequest(["g"]), 5)).groups[0].error_code == na
    assert (await call(b, DeleteGroupsRequest(["g"]), 2)).results[0].error_code == na
    part = OffsetCommitRequest.OffsetCommitRequestPartition
    commit = OffsetCommitRequest(
        "g", -1, "", None, -1, [OffsetCommitRequest.OffsetCommitRequestTopic("t", [part(0, 1)])]
    )
    assert (await call(b, commit, 8)).topics[0].partitions[0].error_code == na
    assert (await call(b, OffsetFetchRequest("g", None), 7)).error_code == na
    fetch_v1 = OffsetFetchRequest("g", [OffsetFetchRequest.OffsetFetchRequestTopic("t", [0])])
    assert (await call(b, fetch_v1, 1)).topics[0].partitions[0].error_code == na
    # FindCoordinator does not need the coordinator object.
    assert (await call(b, FindCoordinatorRequest("g"), 3)).error_code == 0


@run
async def test_offset_commit_for_unknown_topic_or_partition() -> None:
    class WithTopics(FakeBroker):
        def topic(self, name: str) -> TopicInfo | None:
            info = super().topic(name)
            if info is not None:
                del info.partitions[2:]
            return info if name == "t" else None

    b = WithTopics()
    assert b.groups is not None
    await b.groups.start()
    part = OffsetCommitRequest.OffsetCommitRequestPartition
    topic = OffsetCommitRequest.OffsetCommitRequestTopic
    topics = [topic("t", [part(0, 5), part(2, 5)]), topic("nope", [part(0, 1)])]
    req = OffsetCommitRequest("g", -1, "", None, -1, topics)
    r = await call(b, req, 8)
    assert [(t.name, p.partition_index, p.error_code) for t in r.topics for p in t.partitions] == [
        ("t", 0, 0),
        ("t", 2, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        ("nope", 0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    ]
