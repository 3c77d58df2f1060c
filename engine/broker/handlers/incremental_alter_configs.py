"""IncrementalAlterConfigs: set, delete, append to or subtract from single topic configs."""

from __future__ import annotations

from typing import Any

from engine.broker.admin import BROKER, TOPIC, code_of, controller_results
from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.controller.configs import OP_NAMES
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse

API_KEY = ApiKey.INCREMENTAL_ALTER_CONFIGS
Result = IncrementalAlterConfigsResponse.AlterConfigsResourceResponse


async def handle(ctx: RequestContext, request: IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse:
    out = IncrementalAlterConfigsResponse()
    resources = []
    bad: dict[int, tuple[ErrorCode, str]] = {}
    for i, r in enumerate(request.resources):
        if r.resource_type == BROKER:
            bad[i] = (ErrorCode.INVALID_REQUEST, "broker configs are static in amq: set them in the broker config")
        elif r.resource_type != TOPIC:
            bad[i] = (ErrorCode.INVALID_REQUEST, f"resource type {r.resource_type} is not supported")
        elif any(c.config_operation not in OP_NAMES for c in r.configs):
            bad[i] = (ErrorCode.INVALID_REQUEST, "unknown config operation")
        else:
            ops = [{"name": c.name, "op": OP_NAMES[c.config_operation], "value": c.value} for c in r.configs]
            resources.append({"name": r.resource_name, "ops": ops})
    results: dict[str, dict[str, Any]] = {}
    failure: BrokerError | None = None
    if resources:
        try:
            results = await controller_results(
                ctx, "alter_configs", resources=resources, incremental=True, validate_only=request.validate_only
            )
        except BrokerError as e:
            failure = e
    for i, r in enumerate(request.resources):
        if i in bad:
            code, message = bad[i]
            out.responses.append(Result(int(code), message, r.resource_type, r.resource_name))
        else:
            c, m = code_of(results.get(r.resource_name), failure)
            out.responses.append(Result(c, m, r.resource_type, r.resource_name))
    return out
