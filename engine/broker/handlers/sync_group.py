"""SyncGroup (api key 14): the leader hands in assignments; every member gets its own."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import SyncGroupRequest, SyncGroupResponse

API_KEY = ApiKey.SYNC_GROUP


async def handle(ctx: RequestContext, request: SyncGroupRequest) -> SyncGroupResponse:
    if ctx.broker.groups is None:
        return SyncGroupResponse(error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    v = ctx.api_version
    result = await ctx.broker.groups.sync_group(
        group_id=request.group_id,
        generation_id=request.generation_id,
        member_id=request.member_id,
        group_instance_id=request.group_instance_id if v >= 3 else None,
        protocol_type=request.protocol_type if v >= 5 else None,
        protocol_name=request.protocol_name if v >= 5 else None,
        assignments={a.member_id: bytes(a.assignment) for a in request.assignments},
    )
    return SyncGroupResponse(
        error_code=int(result.error),
        protocol_type=result.protocol_type,
        protocol_name=result.protocol_name,
        assignment=result.assignment,
    )
