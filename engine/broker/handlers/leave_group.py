"""LeaveGroup (api key 13): one member (v0-2) or a batch of members (v3+) leave a group."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import LeaveGroupRequest, LeaveGroupResponse

API_KEY = ApiKey.LEAVE_GROUP


async def handle(ctx: RequestContext, request: LeaveGroupRequest) -> LeaveGroupResponse:
    if ctx.broker.groups is None:
        return LeaveGroupResponse(error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    batched = ctx.api_version >= 3
    members = [(m.member_id, m.group_instance_id) for m in request.members] if batched else [(request.member_id, None)]
    error, errors = await ctx.broker.groups.leave_group(group_id=request.group_id, members=members)
    if not batched:
        # Before v3 a member's own error is the response's error.
        if error == ErrorCode.NONE and errors:
            error = errors[0]
        return LeaveGroupResponse(error_code=int(error))
    return LeaveGroupResponse(
        error_code=int(error),
        members=[
            LeaveGroupResponse.MemberResponse(member_id, instance_id, int(code))
            for (member_id, instance_id), code in zip(members, errors, strict=False)
        ],
    )
