"""ListGroups (api key 16): the groups this broker coordinates, optionally by state (v4+)."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import ListGroupsRequest, ListGroupsResponse

API_KEY = ApiKey.LIST_GROUPS


async def handle(ctx: RequestContext, request: ListGroupsRequest) -> ListGroupsResponse:
    if ctx.broker.groups is None:
        return ListGroupsResponse(error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    states = set(request.states_filter) if ctx.api_version >= 4 and request.states_filter else None
    error, groups = await ctx.broker.groups.list_groups(states)
    return ListGroupsResponse(
        error_code=int(error),
        groups=[ListGroupsResponse.ListedGroup(g.group_id, g.protocol_type, g.state) for g in groups],
    )
