"""JoinGroup (api key 11): enter a group's join phase; parked until the phase ends."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import JoinGroupRequest, JoinGroupResponse

API_KEY = ApiKey.JOIN_GROUP


async def handle(ctx: RequestContext, request: JoinGroupRequest) -> JoinGroupResponse:
    if ctx.broker.groups is None:
        return JoinGroupResponse(error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE), member_id=request.member_id)
    v = ctx.api_version
    # v0 has no rebalance timeout: the session timeout doubles as one, as in Kafka.
    rebalance_timeout = request.session_timeout_ms if v == 0 or request.rebalance_timeout_ms < 0 else None
    result = await ctx.broker.groups.join_group(
        group_id=request.group_id,
        member_id=request.member_id,
        group_instance_id=request.group_instance_id if v >= 5 else None,
        client_id=ctx.client_id or "",
        client_host=ctx.client_host or "",
        session_timeout_ms=request.session_timeout_ms,
        rebalance_timeout_ms=request.rebalance_timeout_ms if rebalance_timeout is None else rebalance_timeout,
        protocol_type=request.protocol_type,
        protocols=[(p.name, bytes(p.metadata)) for p in request.protocols],
        require_known_member_id=v >= 4 and request.group_instance_id is None,
    )
    protocol_name = result.protocol_name
    if protocol_name is None and v < 7:
        protocol_name = ""  # nullable only from v7
    member = JoinGroupResponse.JoinGroupResponseMember
    return JoinGroupResponse(
        error_code=int(result.error),
        generation_id=result.generation_id if result.error == ErrorCode.NONE else -1,
        protocol_type=result.protocol_type,
        protocol_name=protocol_name,
        leader=result.leader_id,
        member_id=result.member_id,
        members=[member(m.member_id, m.group_instance_id, m.metadata) for m in result.members],
    )
