"""DescribeGroups (api key 15): state, protocol and members of groups."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.groups import GroupSummary
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import DescribeGroupsRequest, DescribeGroupsResponse

API_KEY = ApiKey.DESCRIBE_GROUPS

# READ (3), DELETE (6) and DESCRIBE (8): what Kafka grants on a group when there is no authorizer.
_GROUP_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8)
_NOT_REQUESTED = -(1 << 31)


async def handle(ctx: RequestContext, request: DescribeGroupsRequest) -> DescribeGroupsResponse:
    group_cls, member_cls = DescribeGroupsResponse.DescribedGroup, DescribeGroupsResponse.DescribedGroupMember
    ops = _GROUP_OPERATIONS if request.include_authorized_operations else _NOT_REQUESTED
    out = []
    for group_id in request.groups:
        if ctx.broker.groups is None:
            error, s = ErrorCode.COORDINATOR_NOT_AVAILABLE, GroupSummary(group_id, "Dead", "", "")
        else:
            error, s = await ctx.broker.groups.describe_group(group_id)
        out.append(
            group_cls(
                error_code=int(error),
                group_id=group_id,
                group_state=s.state,
                protocol_type=s.protocol_type,
                protocol_data=s.protocol,
                members=[
                    member_cls(m.member_id, m.group_instance_id, m.client_id, m.client_host, m.metadata, m.assignment)
                    for m in s.members
                ],
                authorized_operations=ops,
            )
        )
    return DescribeGroupsResponse(groups=out)
