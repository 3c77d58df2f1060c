"""Produce: record batch v2 appended as sent (only offsets, leader epoch and LogAppendTime patched).

acks=1 and acks=all both answer once the WAL says durable: there is one copy, the
WAL (then S3), so "the leader has it" and "every replica has it" are the same moment.
acks=0 gets no answer at all, so its appends are not waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from engine.broker.context import RequestContext
from engine.broker.errors import ANSWERED, error_code_for
from engine.broker.partition import AppendResult
from engine.broker.router import RefResult
from engine.protocol import ApiKey, CorruptRecords, ErrorCode
from engine.protocol.messages import ProduceRequest, ProduceResponse
from engine.protocol.records import read_batches

API_KEY = ApiKey.PRODUCE
log = logging.getLogger(__name__)

PartitionResponse = ProduceResponse.PartitionProduceResponse


def _fail(resp: PartitionResponse, code: ErrorCode, message: str | None) -> None:
    resp.error_code = int(code)
    resp.error_message = message
    resp.base_offset = -1


async def handle(ctx: RequestContext, request: ProduceRequest) -> ProduceResponse:
    return await (await begin(ctx, request))


async def begin(ctx: RequestContext, request: ProduceRequest) -> Awaitable[ProduceResponse]:
    """Validate and append (offsets follow request order); the returned awaitable waits for durability.

    The server runs the next request of the connection as soon as this returns, so a
    producer with several requests in flight gets them into one WAL sync.
    """
    b = ctx.broker
    now_ms = int(time.time() * 1000)
    out = ProduceResponse()
    pending: list[tuple[PartitionResponse, AppendResult]] = []
    relayed: list[PartitionResponse] = []
    relay_items: list[tuple[str, int, int, memoryview]] = []
    bad_request: tuple[ErrorCode, str] | None = None
    if request.acks not in (0, 1, -1):
        bad_request = (ErrorCode.INVALID_REQUIRED_ACKS, f"acks must be 0, 1 or -1, got {request.acks}")
    elif request.transactional_id is not None:
        bad_request = (ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "transactions are not supported")
    for td in request.topic_data:
        tr = ProduceResponse.TopicProduceResponse(name=td.name)
        out.responses.append(tr)
        for pd in td.partition_data:
            resp = PartitionResponse(index=pd.index, base_offset=-1, log_append_time_ms=-1, log_start_offset=-1)
            tr.partition_responses.append(resp)
            if bad_request is not None:
                _fail(resp, *bad_request)
                continue
            try:
                if b.router.leader_to_proxy(td.name, pd.index) is not None:
                    # A zone proxy: the batches go to shared storage, the leader gets a pointer.
                    if pd.records is None or len(pd.records) == 0:
                        raise CorruptRecords("no records")
                    records = pd.records if isinstance(pd.records, memoryview) else memoryview(bytes(pd.records))
                    read_batches(records)  # a corrupt batch is refused here, not after a relay write
                    b.count_client_bytes(ctx.client_id, None, len(records), to_broker=True)
                    relayed.append(resp)
                    relay_items.append((td.name, pd.index, -1, records))
                    continue
                part = await b.partition(td.name, pd.index)
                if pd.records is None or len(pd.records) == 0:
                    raise CorruptRecords("no records")
                records = pd.records if isinstance(pd.records, memoryview) else memoryview(bytearray(pd.records))
                batches = read_batches(records)
                result = part.append(records, batches, now_ms)
                b.counters["produce_bytes"] += len(records)
                b.count_client_bytes(ctx.client_id, None, len(records), to_broker=True)
                b.counters["produce_batches"] += len(batches)
                resp.log_start_offset = part.log_start_offset
                resp.base_offset = result.base_offset
                resp.log_append_time_ms = result.log_append_time
                pending.append((resp, result))
            except CorruptRecords as e:
                _fail(resp, e.error_code, str(e))
            except ANSWERED as e:
                _fail(resp, error_code_for(e), str(e))
    relay = b.router.relay_produce(relay_items, request.timeout_ms) if relay_items else None
    if request.acks == 0:
        for _, result in pending:
            result.done.add_done_callback(_swallow)
    return _complete(out, pending, request.acks, request.timeout_ms, relayed, relay)


async def _complete(
    out: ProduceResponse,
    pending: list[tuple[PartitionResponse, AppendResult]],
    acks: int,
    timeout_ms: int,
    relayed: list[PartitionResponse],
    relay: Awaitable[list[RefResult]] | None,
) -> ProduceResponse:
    if relay is not None:
        for resp, r in zip(relayed, await relay, strict=True):
            if r.error_code:
                _fail(resp, ErrorCode(r.error_code), r.message)
            else:
                resp.base_offset, resp.log_append_time_ms, resp.log_start_offset = (
                    r.base_offset, r.log_append_time, r.log_start_offset)  # fmt: skip
    if acks == 0 or not pending:
        return out
    futures = [asyncio.shield(r.done) for _, r in pending]
    done, _ = await asyncio.wait(futures, timeout=max(timeout_ms, 1) / 1000)
    for (resp, result), fut in zip(pending, futures, strict=True):
        if fut not in done:
            _fail(resp, ErrorCode.REQUEST_TIMED_OUT, f"not durable within {timeout_ms} ms")
            result.done.add_done_callback(_swallow)
        elif fut.exception() is not None:
            exc = fut.exception()
            assert exc is not None
            _fail(resp, error_code_for(exc), str(exc))
        else:
            resp.base_offset = fut.result()
    return out


def _swallow(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("unacknowledged append failed: %s", fut.exception())
