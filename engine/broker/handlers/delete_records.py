"""DeleteRecords: move a partition's log start offset forward (the stream's trim)."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import ANSWERED, BrokerError, error_code_for
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import DeleteRecordsRequest, DeleteRecordsResponse

API_KEY = ApiKey.DELETE_RECORDS
HIGH_WATERMARK = -1


async def handle(ctx: RequestContext, request: DeleteRecordsRequest) -> DeleteRecordsResponse:
    out = DeleteRecordsResponse()
    for t in request.topics:
        tr = DeleteRecordsResponse.DeleteRecordsTopicResult(name=t.name)
        out.topics.append(tr)
        for p in t.partitions:
            resp = DeleteRecordsResponse.DeleteRecordsPartitionResult(partition_index=p.partition_index,
                                                                      low_watermark=-1)  # fmt: skip
            tr.partitions.append(resp)
            try:
                part = await ctx.broker.partition(t.name, p.partition_index)
                stream = part.ready
                offset = stream.end_offset if p.offset == HIGH_WATERMARK else p.offset
                if offset < 0 or offset > stream.end_offset:
                    raise BrokerError(ErrorCode.OFFSET_OUT_OF_RANGE, f"offset {p.offset} is beyond the high watermark")
                await stream.trim(offset)
                resp.low_watermark = stream.start_offset
            except ANSWERED as e:
                resp.error_code = int(error_code_for(e))
    return out
