"""DescribeConfigs: topic configs (own or default) and the broker's static settings."""

from __future__ import annotations

from engine.broker.admin import BROKER, BROKER_LOGGER, STATIC_BROKER_CONFIG, TOPIC, topic_entries
from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import DescribeConfigsRequest, DescribeConfigsResponse

API_KEY = ApiKey.DESCRIBE_CONFIGS
Entry = DescribeConfigsResponse.DescribeConfigsResourceResult
Synonym = DescribeConfigsResponse.DescribeConfigsSynonym


async def handle(ctx: RequestContext, request: DescribeConfigsRequest) -> DescribeConfigsResponse:
    b = ctx.broker
    out = DescribeConfigsResponse()
    for res in request.resources:
        result = DescribeConfigsResponse.DescribeConfigsResult(
            error_code=0, error_message=None, resource_type=res.resource_type, resource_name=res.resource_name
        )
        out.results.append(result)
        keys = res.configuration_keys
        rows: list[tuple[str, str, int, int, str]] = []
        if res.resource_type == TOPIC:
            topic = b.topic(res.resource_name)
            if topic is None:
                result.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                result.error_message = f"topic {res.resource_name!r} does not exist"
                continue
            rows = topic_entries(topic.configs, keys)
        elif res.resource_type == BROKER:
            if res.resource_name not in ("", str(b.node_id)):
                result.error_code = ErrorCode.INVALID_REQUEST
                result.error_message = f"this is broker {b.node_id}, not {res.resource_name!r}"
                continue
            rows = [
                (name, value, STATIC_BROKER_CONFIG, ctype, "")
                for name, (value, ctype) in sorted(b.config.kafka_configs(b.port).items())
                if keys is None or name in keys
            ]
        elif res.resource_type == BROKER_LOGGER:
            rows = []
        else:
            result.error_code = ErrorCode.INVALID_REQUEST
            result.error_message = f"resource type {res.resource_type} is not supported"
            continue
        for name, value, source, ctype, doc in rows:
            result.configs.append(
                Entry(
                    name=name,
                    value=value,
                    read_only=source == STATIC_BROKER_CONFIG,
                    config_source=source,
                    is_sensitive=False,
                    synonyms=[Synonym(name, value, source)] if request.include_synonyms else [],
                    config_type=ctype,
                    documentation=doc if request.include_documentation else None,
                )
            )
    return out
