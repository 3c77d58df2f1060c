"""OffsetForLeaderEpoch: where a leader epoch ended, from the leader-epoch cache rebuilt on open."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError, error_code_for
from engine.protocol import ApiKey
from engine.protocol.messages import OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse
from engine.storage.errors import StorageError

API_KEY = ApiKey.OFFSET_FOR_LEADER_EPOCH


async def handle(ctx: RequestContext, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse:
    out = OffsetForLeaderEpochResponse()
    for t in request.topics:
        tr = OffsetForLeaderEpochResponse.OffsetForLeaderTopicResult(topic=t.topic)
        out.topics.append(tr)
        for p in t.partitions:
            resp = OffsetForLeaderEpochResponse.EpochEndOffset(partition=p.partition, leader_epoch=-1, end_offset=-1)
            tr.partitions.append(resp)
            try:
                part = await ctx.broker.partition(t.topic, p.partition)
                part.check_leader_epoch(p.current_leader_epoch)
                resp.leader_epoch, resp.end_offset = part.end_offset_for_epoch(p.leader_epoch)
            except (BrokerError, StorageError) as e:
                resp.error_code = int(error_code_for(e))
    return out
