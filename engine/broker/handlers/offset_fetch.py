"""OffsetFetch (api key 9): a group's committed offsets, for listed partitions or all of them."""

from __future__ import annotations

from typing import Any

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import OffsetFetchRequest, OffsetFetchResponse

API_KEY = ApiKey.OFFSET_FETCH

_Topic = OffsetFetchResponse.OffsetFetchResponseTopic
_Partition = OffsetFetchResponse.OffsetFetchResponsePartition


async def _fetch_one(ctx: RequestContext, group_id: str, topics: list[Any] | None) -> tuple[ErrorCode, list[_Topic]]:
    if ctx.broker.groups is None:
        return ErrorCode.COORDINATOR_NOT_AVAILABLE, []
    wanted = None if topics is None else [(t.name, p) for t in topics for p in t.partition_indexes]
    error, rows = await ctx.broker.groups.fetch_offsets(group_id=group_id, partitions=wanted)
    if error != ErrorCode.NONE:
        return ErrorCode(error), []
    by_topic: dict[str, list[_Partition]] = {}
    for topic, partition, co in rows:
        if co is None:
            p = _Partition(partition, -1, -1, "", 0)
        else:
            p = _Partition(partition, co.offset, co.leader_epoch, co.metadata, 0)
        by_topic.setdefault(topic, []).append(p)
    return ErrorCode.NONE, [_Topic(name, parts) for name, parts in by_topic.items()]


async def handle(ctx: RequestContext, request: OffsetFetchRequest) -> OffsetFetchResponse:
    v = ctx.api_version
    groups = getattr(request, "groups", None)
    if v >= 8 and groups is not None:  # multi-group form, for when the codec offers v8
        group_cls = OffsetFetchResponse.OffsetFetchResponseGroup  # type: ignore[attr-defined]
        out = []
        for g in groups:
            error, group_topics = await _fetch_one(ctx, g.group_id, g.topics)
            out.append(group_cls(group_id=g.group_id, topics=group_topics, error_code=int(error)))
        return OffsetFetchResponse(groups=out)  # type: ignore[call-arg]
    # v1 cannot ask for "all partitions" (topics is not nullable there).
    topics = request.topics if v >= 2 else (request.topics or [])
    error, result = await _fetch_one(ctx, request.group_id, topics)
    if error != ErrorCode.NONE and v < 2:
        # No top-level error code before v2: it goes on every partition asked for.
        result = [
            _Topic(t.name, [_Partition(p, -1, -1, "", int(error)) for p in t.partition_indexes])
            for t in (request.topics or [])
        ]
    return OffsetFetchResponse(topics=result, error_code=int(error))
