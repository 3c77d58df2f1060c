"""DeleteGroups (api key 42): delete empty groups and their committed offsets."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import DeleteGroupsRequest, DeleteGroupsResponse

API_KEY = ApiKey.DELETE_GROUPS


async def handle(ctx: RequestContext, request: DeleteGroupsRequest) -> DeleteGroupsResponse:
    groups = ctx.broker.groups
    if groups is None:
        errors = [ErrorCode.COORDINATOR_NOT_AVAILABLE] * len(request.groups_names)
    else:
        errors = await groups.delete_groups(request.groups_names)
    return DeleteGroupsResponse(
        results=[
            DeleteGroupsResponse.DeletableGroupResult(group_id, int(code))
            for group_id, code in zip(request.groups_names, errors, strict=True)
        ]
    )
