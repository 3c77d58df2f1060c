"""OffsetCommit (api key 8): store a group's consumed positions, acknowledged once durable."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.groups import OffsetCommitEntry
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import OffsetCommitRequest, OffsetCommitResponse

API_KEY = ApiKey.OFFSET_COMMIT


def _partition_exists(ctx: RequestContext, topic: str, partition: int) -> bool:
    info = ctx.broker.topic(topic)
    return info is not None and 0 <= partition < len(info.partitions)


async def handle(ctx: RequestContext, request: OffsetCommitRequest) -> OffsetCommitResponse:
    v = ctx.api_version
    # Kafka answers partitions it does not know without asking the coordinator.
    errors: dict[tuple[str, int], ErrorCode] = {}
    entries: list[OffsetCommitEntry] = []
    for t in request.topics:
        for p in t.partitions:
            if not _partition_exists(ctx, t.name, p.partition_index):
                errors[(t.name, p.partition_index)] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            epoch = p.committed_leader_epoch if v >= 6 else -1
            meta = p.committed_metadata
            entries.append(OffsetCommitEntry(t.name, p.partition_index, p.committed_offset, epoch, meta))
    if ctx.broker.groups is None:
        codes = [ErrorCode.COORDINATOR_NOT_AVAILABLE] * len(entries)
    elif entries:
        codes = await ctx.broker.groups.commit_offsets(
            group_id=request.group_id,
            generation_id=request.generation_id_or_member_epoch,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id if v >= 7 else None,
            offsets=entries,
        )
    else:
        codes = []
    for e, code in zip(entries, codes, strict=True):
        errors[(e.topic, e.partition)] = ErrorCode(code)
    topic_cls = OffsetCommitResponse.OffsetCommitResponseTopic
    part_cls = OffsetCommitResponse.OffsetCommitResponsePartition
    topics = []
    for t in request.topics:
        parts = [part_cls(p.partition_index, int(errors[(t.name, p.partition_index)])) for p in t.partitions]
        topics.append(topic_cls(t.name, parts))
    return OffsetCommitResponse(topics=topics)
