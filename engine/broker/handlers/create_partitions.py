"""CreatePartitions: grow a topic; new partitions get new streams (no data moves)."""

from __future__ import annotations

from typing import Any

from engine.broker.admin import code_of, controller_results
from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import CreatePartitionsRequest, CreatePartitionsResponse

API_KEY = ApiKey.CREATE_PARTITIONS
Result = CreatePartitionsResponse.CreatePartitionsTopicResult


async def handle(ctx: RequestContext, request: CreatePartitionsRequest) -> CreatePartitionsResponse:
    counts: dict[str, int] = {}
    for t in request.topics:
        counts[t.name] = counts.get(t.name, 0) + 1
    specs = [
        {"name": t.name, "count": t.count, "assignments": [list(a.broker_ids) for a in t.assignments or []]}
        for t in request.topics
        if counts[t.name] == 1
    ]
    results: dict[str, dict[str, Any]] = {}
    failure: BrokerError | None = None
    if specs:
        try:
            results = await controller_results(
                ctx, "create_partitions", topics=specs, validate_only=request.validate_only
            )
        except BrokerError as e:
            failure = e
    out = CreatePartitionsResponse()
    for t in request.topics:
        if counts[t.name] > 1:
            out.results.append(Result(t.name, ErrorCode.INVALID_REQUEST, "topic listed more than once"))
            continue
        code, message = code_of(results.get(t.name), failure)
        out.results.append(Result(t.name, code, message))
    return out
