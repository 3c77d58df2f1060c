"""FindCoordinator (api key 10): which broker coordinates a group (v0-3 one key, v4+ many)."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import FindCoordinatorRequest, FindCoordinatorResponse

API_KEY = ApiKey.FIND_COORDINATOR

GROUP_KEY_TYPE = 0


def _lookup(ctx: RequestContext, key: str, key_type: int) -> tuple[ErrorCode, str | None, int, str, int]:
    """(error, message, node_id, host, port) for one key."""
    if key_type != GROUP_KEY_TYPE:
        # Transactions (1) and share groups (2) have no coordinator here.
        return ErrorCode.COORDINATOR_NOT_AVAILABLE, "only group coordinators are available", -1, "", -1
    try:
        node_id, host, port = ctx.broker.coordinator_for(key)
    except Exception as e:
        return ErrorCode.COORDINATOR_NOT_AVAILABLE, str(e) or type(e).__name__, -1, "", -1
    return ErrorCode.NONE, None, node_id, host, port


async def handle(ctx: RequestContext, request: FindCoordinatorRequest) -> FindCoordinatorResponse:
    keys = getattr(request, "coordinator_keys", None)
    if ctx.api_version >= 4 and keys is not None:  # batched form, for when the codec offers v4
        coordinator_cls = FindCoordinatorResponse.Coordinator  # type: ignore[attr-defined]
        coordinators = []
        for key in keys:
            error, message, node_id, host, port = _lookup(ctx, key, request.key_type)
            coordinators.append(coordinator_cls(key, node_id, host, port, int(error), message))
        return FindCoordinatorResponse(coordinators=coordinators)  # type: ignore[call-arg]
    error, message, node_id, host, port = _lookup(ctx, request.key, request.key_type)
    return FindCoordinatorResponse(error_code=int(error), error_message=message, node_id=node_id, host=host, port=port)
