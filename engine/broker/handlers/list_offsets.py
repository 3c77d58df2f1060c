"""ListOffsets: earliest (-2), latest (-1, the high watermark) or the first record at/after a timestamp."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError, error_code_for
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import ListOffsetsRequest, ListOffsetsResponse
from engine.storage.errors import StorageError

API_KEY = ApiKey.LIST_OFFSETS
LATEST, EARLIEST = -1, -2
PartitionResponse = ListOffsetsResponse.ListOffsetsPartitionResponse


async def handle(ctx: RequestContext, request: ListOffsetsRequest) -> ListOffsetsResponse:
    b = ctx.broker
    out = ListOffsetsResponse()
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
                part = await b.partition(t.name, p.partition_index)
                part.check_leader_epoch(p.current_leader_epoch)
                stream = part.ready
                if p.timestamp == LATEST:
                    resp.offset = stream.end_offset
                    resp.leader_epoch = part.leader_epoch
                elif p.timestamp == EARLIEST:
                    resp.offset = stream.start_offset
                    resp.leader_epoch = part.epoch_for_offset(stream.start_offset)
                elif p.timestamp < 0:
                    raise BrokerError(ErrorCode.INVALID_REQUEST, f"unknown special timestamp {p.timestamp}")
                else:
                    resp.timestamp, resp.offset = await part.offset_for_timestamp(p.timestamp)
                    if resp.offset >= 0:
                        resp.leader_epoch = part.epoch_for_offset(resp.offset)
            except (BrokerError, StorageError) as e:
                resp.error_code = int(error_code_for(e))
                resp.offset = -1
    return out
