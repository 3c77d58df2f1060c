"""OffsetForLeaderEpoch: where a leader epoch ended, from the leader-epoch cache rebuilt on open."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import ANSWERED, error_code_for
from engine.broker.router import EPOCH, OffsetItem
from engine.protocol import ApiKey
from engine.protocol.messages import OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse

API_KEY = ApiKey.OFFSET_FOR_LEADER_EPOCH


async def handle(ctx: RequestContext, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse:
    b = ctx.broker
    out = OffsetForLeaderEpochResponse()
    relayed: list[tuple[OffsetForLeaderEpochResponse.EpochEndOffset, OffsetItem]] = []
    for t in request.topics:
        tr = OffsetForLeaderEpochResponse.OffsetForLeaderTopicResult(topic=t.topic)
        out.topics.append(tr)
        for p in t.partitions:
            resp = OffsetForLeaderEpochResponse.EpochEndOffset(partition=p.partition, leader_epoch=-1, end_offset=-1)
            tr.partitions.append(resp)
            if b.router.leader_to_proxy(t.topic, p.partition) is not None:
                relayed.append((resp, OffsetItem(EPOCH, t.topic, p.partition, p.current_leader_epoch, p.leader_epoch)))
                continue
            try:
                part = await b.partition(t.topic, p.partition)
                part.check_leader_epoch(p.current_leader_epoch)
                resp.leader_epoch, resp.end_offset = part.end_offset_for_epoch(p.leader_epoch)
            except ANSWERED as e:
                resp.error_code = int(error_code_for(e))
    if relayed:
        for (resp, _), r in zip(relayed, await b.router.offsets([i for _, i in relayed]), strict=True):
            resp.error_code, resp.leader_epoch, resp.end_offset = r.error_code, r.leader_epoch, r.offset
    return out
