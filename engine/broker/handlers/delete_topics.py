"""DeleteTopics: by name (v1-5) or by name or topic id (v6)."""

from __future__ import annotations

from typing import Any

from engine.broker.admin import code_of, controller_results
from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import DeleteTopicsRequest, DeleteTopicsResponse

API_KEY = ApiKey.DELETE_TOPICS
Result = DeleteTopicsResponse.DeletableTopicResult


async def handle(ctx: RequestContext, request: DeleteTopicsRequest) -> DeleteTopicsResponse:
    b = ctx.broker
    out = DeleteTopicsResponse()
    names: list[str] = []
    if ctx.api_version >= 6:
        for state in request.topics:
            if state.name is not None:
                names.append(state.name)
                continue
            topic = b.image.topics_by_id.get(state.topic_id)
            if topic is None:
                out.responses.append(Result(name=None, topic_id=state.topic_id, error_code=ErrorCode.UNKNOWN_TOPIC_ID,
                                            error_message=f"no topic has id {state.topic_id}"))  # fmt: skip
            else:
                names.append(topic.name)
    else:
        names = list(request.topic_names)
    ids = {n: b.topic(n).id for n in names if b.topic(n) is not None}  # type: ignore[union-attr]
    results: dict[str, dict[str, Any]] = {}
    failure: BrokerError | None = None
    if names:
        try:
            results = await controller_results(ctx, "delete_topics", names=names)
        except BrokerError as e:
            failure = e
    for n in names:
        code, message = code_of(results.get(n), failure)
        res = Result(name=n, error_code=code, error_message=message)
        if n in ids:
            res.topic_id = ids[n]
        out.responses.append(res)
    return out
