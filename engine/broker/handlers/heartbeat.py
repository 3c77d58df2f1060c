"""Heartbeat (api key 12): keeps a member's session alive; says when a rebalance is on."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import HeartbeatRequest, HeartbeatResponse

API_KEY = ApiKey.HEARTBEAT


async def handle(ctx: RequestContext, request: HeartbeatRequest) -> HeartbeatResponse:
    if ctx.broker.groups is None:
        return HeartbeatResponse(error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    error = await ctx.broker.groups.heartbeat(
        group_id=request.group_id,
        generation_id=request.generation_id,
        member_id=request.member_id,
        group_instance_id=request.group_instance_id if ctx.api_version >= 3 else None,
    )
    return HeartbeatResponse(error_code=int(error))
