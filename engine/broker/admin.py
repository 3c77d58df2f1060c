"""Helpers of the admin handlers: resource types, config sources, controller results."""

from __future__ import annotations

from typing import Any

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.controller.configs import TOPIC_CONFIGS
from engine.protocol import ErrorCode

# ConfigResource types.
TOPIC, BROKER, BROKER_LOGGER = 2, 4, 8
# DescribeConfigs config sources.
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5


def topic_entries(configs: dict[str, str], keys: list[str] | None = None) -> list[tuple[str, str, int, int, str]]:
    """(name, value, source, config_type, doc) of a topic's configs: its own, else the default."""
    out = []
    for name, d in sorted(TOPIC_CONFIGS.items()):
        if keys is not None and name not in keys:
            continue
        if name in configs:
            out.append((name, configs[name], DYNAMIC_TOPIC_CONFIG, d.type, d.documentation))
        else:
            out.append((name, d.default or "", DEFAULT_CONFIG, d.type, d.documentation))
    return out


async def controller_results(ctx: RequestContext, method: str, **params: Any) -> dict[str, dict[str, Any]]:
    """Per-name results of a controller topic operation; BrokerError when the controller is unreachable."""
    res = await ctx.broker.controller_call(method, **params)
    return {r["name"]: r for r in res["results"]}


def code_of(result: dict[str, Any] | None, exc: BrokerError | None = None) -> tuple[int, str | None]:
    if exc is not None:
        return int(exc.error_code), str(exc)
    if result is None:
        return int(ErrorCode.UNKNOWN_SERVER_ERROR), "no answer from the controller"
    return int(result["error_code"]), result.get("error_message")
