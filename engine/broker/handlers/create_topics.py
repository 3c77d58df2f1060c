"""CreateTopics: validated and created by the controller; answered once this broker sees the topic."""

from __future__ import annotations

from typing import Any

from engine.broker.admin import code_of, controller_results, topic_entries
from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import CreateTopicsRequest, CreateTopicsResponse

API_KEY = ApiKey.CREATE_TOPICS
Result = CreateTopicsResponse.CreatableTopicResult


async def handle(ctx: RequestContext, request: CreateTopicsRequest) -> CreateTopicsResponse:
    cfg = ctx.broker.config
    counts: dict[str, int] = {}
    for t in request.topics:
        counts[t.name] = counts.get(t.name, 0) + 1
    specs: list[dict[str, Any]] = []
    for t in request.topics:
        if counts[t.name] > 1:
            continue
        spec: dict[str, Any] = {
            "name": t.name,
            "num_partitions": cfg.num_partitions if t.num_partitions == -1 else t.num_partitions,
            "replication_factor": cfg.default_replication_factor
            if t.replication_factor == -1
            else t.replication_factor,
            "configs": {c.name: c.value for c in t.configs},
        }
        if t.assignments:
            spec["assignments"] = {str(a.partition_index): list(a.broker_ids) for a in t.assignments}
            spec["num_partitions"] = t.num_partitions
            spec["replication_factor"] = t.replication_factor
        specs.append(spec)
    results: dict[str, dict[str, Any]] = {}
    failure: BrokerError | None = None
    if specs:
        try:
            results = await controller_results(ctx, "create_topics", topics=specs, validate_only=request.validate_only)
        except BrokerError as e:
            failure = e
    out = CreateTopicsResponse()
    for t in request.topics:
        if counts[t.name] > 1:
            out.topics.append(Result(name=t.name, error_code=ErrorCode.INVALID_REQUEST,
                                     error_message="topic listed more than once in the request"))  # fmt: skip
            continue
        r = results.get(t.name)
        code, message = code_of(r, failure)
        res = Result(name=t.name, error_code=code, error_message=message)
        if code == 0:
            spec = next(s for s in specs if s["name"] == t.name)
            topic = ctx.broker.topic(t.name)
            own = {k: str(v) for k, v in spec["configs"].items()}
            if topic is not None and not request.validate_only:
                res.topic_id = topic.id
                res.num_partitions = len(topic.partitions)
                res.replication_factor = topic.replication_factor
                own = topic.configs
            else:
                res.num_partitions = spec["num_partitions"] if not t.assignments else len(t.assignments)
                res.replication_factor = (
                    spec["replication_factor"] if not t.assignments else len(t.assignments[0].broker_ids)
                )
            res.configs = [
                CreateTopicsResponse.CreatableTopicConfigs(name, value, False, source, False)
                for name, value, source, _, _ in topic_entries(own)
            ]
        out.topics.append(res)
    return out
