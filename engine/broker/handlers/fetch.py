"""Fetch: batches as stored, long poll until min_bytes or max_wait, within max_bytes limits.

No transactions, so read_committed and read_uncommitted both read up to the high
watermark (the end of what the WAL has made durable), which is also the last stable
offset. No fetch sessions either: session id 0 tells clients to send full fetches.
"""

from __future__ import annotations

import asyncio

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError, error_code_for
from engine.broker.partition import Partition
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import FetchRequest, FetchResponse
from engine.storage.errors import StorageError

API_KEY = ApiKey.FETCH
PartitionData = FetchResponse.PartitionData


async def _read(
    ctx: RequestContext, request: FetchRequest
) -> tuple[FetchResponse, int, bool, list[tuple[Partition, int]]]:
    """One pass over the requested partitions: (response, bytes, any error, partitions to wait on)."""
    b = ctx.broker
    out = FetchResponse(session_id=0)
    remaining = request.max_bytes if request.max_bytes > 0 else 0x7FFFFFFF
    total = 0
    errors = False
    waits: list[tuple[Partition, int]] = []
    committed = request.isolation_level == 1
    for ft in request.topics:
        tr = FetchResponse.FetchableTopicResponse(topic=ft.topic)
        out.responses.append(tr)
        for fp in ft.partitions:
            pd = PartitionData(
                partition_index=fp.partition,
                high_watermark=-1,
                last_stable_offset=-1,
                log_start_offset=-1,
                aborted_transactions=[] if committed else None,
                records=b"",
            )
            tr.partitions.append(pd)
            try:
                part = await b.partition(ft.topic, fp.partition)
                part.check_leader_epoch(fp.current_leader_epoch)
                stream = part.ready
                hw = stream.end_offset
                pd.high_watermark = hw
                pd.last_stable_offset = hw
                pd.log_start_offset = stream.start_offset
                offset = fp.fetch_offset
                if offset < stream.start_offset or offset > hw:
                    raise BrokerError(
                        ErrorCode.OFFSET_OUT_OF_RANGE, f"offset {offset} is outside [{stream.start_offset}, {hw}]"
                    )
                if offset == hw:
                    waits.append((part, offset))
                    continue
                limit = min(fp.partition_max_bytes, remaining) if fp.partition_max_bytes > 0 else remaining
                batches = await stream.read(offset, max(limit, 1))
                chosen: list[bytes] = []
                size = 0
                for batch in batches:
                    n = len(batch.payload)
                    # KIP-74: the first batch of the response goes out whatever its size, so a
                    # consumer always makes progress; later ones only within both limits.
                    if (total or chosen) and size + n > limit:
                        break
                    chosen.append(batch.payload)
                    size += n
                if chosen:
                    pd.records = chosen  # type: ignore[assignment]
                    total += size
                    remaining -= size
                    part.bytes_out += size
                    part.requests += 1
                    offset = batches[len(chosen) - 1].end_offset
                waits.append((part, offset))
            except (BrokerError, StorageError) as e:
                pd.error_code = int(error_code_for(e))
                errors = True
    return out, total, errors, waits


async def handle(ctx: RequestContext, request: FetchRequest) -> FetchResponse:
    if request.session_id != 0:
        return FetchResponse(error_code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND, session_id=0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(request.max_wait_ms, 0) / 1000
    min_bytes = max(request.min_bytes, 1)
    while True:
        out, total, errors, waits = await _read(ctx, request)
        left = deadline - loop.time()
        if total >= min_bytes or errors or left <= 0 or not waits:
            ctx.broker.counters["fetch_bytes"] += total
            ctx.broker.count_client_bytes(ctx.client_id, request.rack_id or None, total, to_broker=False)
            return out
        # Long poll: one future that any waited-on partition resolves when it gets data, or
        # max_wait does; a task per partition would cost more than the fetch itself.
        wake: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(left, _wake, wake)
        for part, offset in waits:
            stream = part.ready
            if stream.end_offset > offset:
                _wake(wake)
                break
            stream.add_data_waiter(wake)
        try:
            await wake
        finally:
            timer.cancel()
            _wake(wake)
        if not any(p.ready.end_offset > off for p, off in waits) and deadline > loop.time():
            # Woken without data: a stream that stopped taking data (closed, fenced). Do not spin on it.
            await asyncio.sleep(min(0.05, deadline - loop.time()))


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
