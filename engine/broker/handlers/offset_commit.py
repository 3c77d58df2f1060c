"""OffsetCommit (api key 8): store a group's consumed positions, acknowledged once durable."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.groups import OffsetCommitEntry
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import OffsetCommitRequest, OffsetCommitResponse

API_KEY = ApiKey.OFFSET_COMMIT


async def handle(ctx: RequestContext, request: OffsetCommitRequest) -> OffsetCommitResponse:
    v = ctx.api_version
    entries = [
        OffsetCommitEntry(
            t.name,
            p.partition_index,
            p.committed_offset,
            p.committed_leader_epoch if v >= 6 else -1,
            p.committed_metadata,
        )
        for t in request.topics
        for p in t.partitions
    ]
    if ctx.broker.groups is None:
        errors = [ErrorCode.COORDINATOR_NOT_AVAILABLE] * len(entries)
    else:
        errors = await ctx.broker.groups.commit_offsets(
            group_id=request.group_id,
            generation_id=request.generation_id_or_member_epoch,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id if v >= 7 else None,
            offsets=entries,
        )
    it = iter(errors)
    topic_cls = OffsetCommitResponse.OffsetCommitResponseTopic
    part_cls = OffsetCommitResponse.OffsetCommitResponsePartition
    return OffsetCommitResponse(
        topics=[
            topic_cls(t.name, [part_cls(p.partition_index, int(next(it))) for p in t.partitions])
            for t in request.topics
        ]
    )
