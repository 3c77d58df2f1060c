"""Produce: record batch v2 appended as sent (only offsets, leader epoch and LogAppendTime patched).

acks=1 and acks=all both answer once the WAL says durable: there is one copy, the
WAL (then S3), so "the leader has it" and "every replica has it" are the same moment.
acks=0 gets no answer at all, so its appends are not waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from engine.broker.context import RequestContext
from engine.broker.errors import ANSWERED, error_code_for
from engine.broker.partition import AppendResult
from engine.broker.router import RefResult
from engine.protocol import ApiKey, CorruptRecords, ErrorCode
from engine.protocol.messages import ProduceRequest, ProduceResponse
from engine.protocol.records import read_batches
from engine.util.futures import when_all

API_KEY = ApiKey.PRODUCE
log = logging.getLogger(__name__)

PartitionResponse = ProduceResponse.PartitionProduceResponse
#: (topic, partition, leader epoch, records) a zone proxy relays (engine/broker/router.py).
RelayItems = list[tuple[str, int, int, memoryview]]


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
    relay_items: RelayItems = []
    bad_request: tuple[ErrorCode, str] | None = None
    if request.acks not in (0, 1, -1):
        bad_request = (ErrorCode.INVALID_REQUIRED_ACKS, f"acks must be 0, 1 or -1, got {request.acks}")
    elif request.transactional_id is not None:
        bad_request = (ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "transactions are not supported")
    # Partitions per request tell how well a client batches: librdkafka sends one partition per
    # request, so per-request work on the broker is paid per partition (docs/perf.md).
    b.counters["produce_requests"] += 1
    b.counters["produce_partitions"] += sum(len(td.partition_data) for td in request.topic_data)
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
    if request.acks == 0:
        for _, result in pending:
            result.done.add_done_callback(_swallow)
    if relay_items:
        return _relayed(b.router.relay_produce, out, pending, request, relayed, relay_items)
    return _settle(out, pending, request.acks, request.timeout_ms)


def _relayed(
    relay_produce: Callable[[RelayItems, int, Callable[[list[RefResult]], None]], None],
    out: ProduceResponse,
    pending: list[tuple[PartitionResponse, AppendResult]],
    request: ProduceRequest,
    relayed: list[PartitionResponse],
    relay_items: RelayItems,
) -> asyncio.Future[ProduceResponse]:
    """The response once the relayed partitions' leaders answered and this broker's own appends
    are durable (both waited for at once, by callbacks, as _settle does)."""
    answer: asyncio.Future[ProduceResponse] = asyncio.get_running_loop().create_future()
    settled = _settle(out, pending, request.acks, request.timeout_ms)
    relay_answered = False

    def both() -> None:
        if relay_answered and settled.done() and not answer.done():
            answer.set_result(out)

    def delivered(results: list[RefResult]) -> None:
        nonlocal relay_answered
        for resp, r in zip(relayed, results, strict=True):
            if r.error_code:
                _fail(resp, ErrorCode(r.error_code), r.message)
            else:
                resp.base_offset, resp.log_append_time_ms, resp.log_start_offset = (
                    r.base_offset, r.log_append_time, r.log_start_offset)  # fmt: skip
        relay_answered = True
        both()

    settled.add_done_callback(lambda _f: both())
    relay_produce(relay_items, request.timeout_ms, delivered)
    return answer


def _settle(
    out: ProduceResponse, pending: list[tuple[PartitionResponse, AppendResult]], acks: int, timeout_ms: int
) -> asyncio.Future[ProduceResponse]:
    """The response, once every append is durable or the request's timeout has passed."""
    answer: asyncio.Future[ProduceResponse] = asyncio.get_running_loop().create_future()
    if acks == 0 or not pending:
        answer.set_result(out)
        return answer

    def finish() -> None:
        for resp, result in pending:
            fut = result.done
            if not fut.done():
                _fail(resp, ErrorCode.REQUEST_TIMED_OUT, f"not durable within {timeout_ms} ms")
                fut.add_done_callback(_swallow)
            elif fut.cancelled():
                _fail(resp, ErrorCode.NOT_LEADER_OR_FOLLOWER, "the append was cancelled: the partition closed")
            elif (exc := fut.exception()) is not None:
                _fail(resp, error_code_for(exc), str(exc))
            else:
                resp.base_offset = fut.result()
        answer.set_result(out)

    when_all([result.done for _, result in pending], max(timeout_ms, 1) / 1000, finish)
    return answer


def _swallow(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("unacknowledged append failed: %s", fut.exception())
