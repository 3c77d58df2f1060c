"""ApiVersions: the APIs that have a handler, with the codec's version ranges."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey
from engine.protocol.messages import ApiVersionsRequest, ApiVersionsResponse

API_KEY = ApiKey.API_VERSIONS


async def handle(ctx: RequestContext, request: ApiVersionsRequest) -> ApiVersionsResponse:
    return ApiVersionsResponse(error_code=0, api_keys=ctx.broker.dispatcher.api_versions())
