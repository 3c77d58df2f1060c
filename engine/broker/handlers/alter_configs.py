"""AlterConfigs: replace a topic's whole set of configs (the legacy, non-incremental API)."""

from __future__ import annotations

from typing import Any

from engine.broker.admin import BROKER, TOPIC, code_of, controller_results
from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import AlterConfigsRequest, AlterConfigsResponse

API_KEY = ApiKey.ALTER_CONFIGS
Result = AlterConfigsResponse.AlterConfigsResourceResponse


async def handle(ctx: RequestContext, request: AlterConfigsRequest) -> AlterConfigsResponse:
    resources = [
        {"name": r.resource_name, "ops": [{"name": c.name, "op": "set", "value": c.value} for c in r.configs]}
        for r in request.resources
        if r.resource_type == TOPIC
    ]
    results: dict[str, dict[str, Any]] = {}
    failure: BrokerError | None = None
    if resources:
        try:
            results = await controller_results(
                ctx, "alter_configs", resources=resources, incremental=False, validate_only=request.validate_only
            )
        except BrokerError as e:
            failure = e
    out = AlterConfigsResponse()
    for r in request.resources:
        if r.resource_type == TOPIC:
            code, message = code_of(results.get(r.resource_name), failure)
        elif r.resource_type == BROKER:
            code, message = ErrorCode.INVALID_REQUEST, "broker configs are static in amq: set them in the broker config"
        else:
            code, message = ErrorCode.INVALID_REQUEST, f"resource type {r.resource_type} is not supported"
        out.responses.append(Result(int(code), message, r.resource_type, r.resource_name))
    return out
