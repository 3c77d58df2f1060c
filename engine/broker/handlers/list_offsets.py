"""ListOffsets: earliest (-2), latest (-1, the high watermark) or the first record at/after a timestamp."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import ANSWERED, BrokerError, error_code_for
from engine.broker.router import LIST, OffsetItem
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import ListOffsetsRequest, ListOffsetsResponse

API_KEY = ApiKey.LIST_OFFSETS
PartitionResponse = ListOffsetsResponse.ListOffsetsPartitionResponse


async def handle(ctx: RequestContext, request: ListOffsetsRequest) -> ListOffsetsResponse:
    b = ctx.broker
    out = ListOffsetsResponse()
    relayed: list[tuple[PartitionResponse, OffsetItem]] = []
    for t in request.topics:
        tr = ListOffsetsResponse.ListOffsetsTopicResponse(name=t.name)
        out.topics.append(tr)
        seen: set[int] = set()
        for p in t.partitions:
            resp = PartitionResponse(partition_index=p.partition_index, timestamp=-1, offset=-1, leader_epoch=-1)
            tr.partitions.append(resp)
            try:
                if p.partition_index in seen:
                    raise BrokerError(ErrorCode.INVALID_REQUEST, "partition listed twice")
                seen.add(p.partition_index)
                if b.router.leader_to_proxy(t.name, p.partition_index) is not None:
                    relayed.append((resp, OffsetItem(LIST, t.name, p.partition_index, p.current_leader_epoch,
                                                     p.timestamp)))  # fmt: skip
                    continue
                part = await b.partition(t.name, p.partition_index)
                part.check_leader_epoch(p.current_leader_epoch)
                resp.timestamp, resp.offset, resp.leader_epoch = await part.list_offset(p.timestamp)
            except ANSWERED as e:
                resp.error_code = int(error_code_for(e))
                resp.offset = -1
    if relayed:
        # A zone proxy asks the leader (a few bytes across zones, no data).
        for (resp, _), r in zip(relayed, await b.router.offsets([i for _, i in relayed]), strict=True):
            resp.error_code, resp.timestamp, resp.offset, resp.leader_epoch = (
                r.error_code, r.timestamp, r.offset, r.leader_epoch)  # fmt: skip
    return out
