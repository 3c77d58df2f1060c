"""Fetch: batches as stored, long poll until min_bytes or max_wait, within max_bytes limits.

No transactions, so read_committed and read_uncommitted both read up to the high
watermark (the end of what the WAL has made durable), which is also the last stable
offset. No fetch sessions either: session id 0 tells clients to send full fetches.
"""

from __future__ import annotations

import asyncio
from functools import partial

from engine.broker.context import RequestContext
from engine.broker.errors import ANSWERED, BrokerError, error_code_for
from engine.broker.partition import Partition
from engine.broker.router import TailItem, TailResult
from engine.controller.api import BrokerRecord
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import FetchRequest, FetchResponse
from engine.storage.errors import StorageError
from engine.storage.objects.format import Batch
from engine.util.histogram import now

API_KEY = ApiKey.FETCH
PartitionData = FetchResponse.PartitionData


Remote = dict[int, tuple["BrokerRecord", list[TailItem]]]


async def _read(
    ctx: RequestContext, request: FetchRequest
) -> tuple[FetchResponse, int, bool, list[tuple[Partition, int]], Remote]:
    """One pass over the requested partitions: (response, bytes, any error, partitions to wait on,
    and partitions this zone proxy waits on at their leaders)."""
    b = ctx.broker
    out = FetchResponse(session_id=0)
    remaining = request.max_bytes if request.max_bytes > 0 else 0x7FFFFFFF
    total = 0
    errors = False
    waits: list[tuple[Partition, int]] = []
    proxied: list[tuple[PartitionData, TailItem, BrokerRecord]] = []
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
            leader = b.router.leader_to_proxy(ft.topic, fp.partition)
            if leader is not None:
                item = TailItem(ft.topic, fp.partition, fp.fetch_offset, fp.current_leader_epoch,
                                max(fp.partition_max_bytes, 1))  # fmt: skip
                proxied.append((pd, item, leader))
                continue
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
                chosen, size = _choose(batches, limit, total)
                if chosen:
                    pd.records = chosen  # type: ignore[assignment]
                    total += size
                    remaining -= size
                    part.bytes_out += size
                    part.requests += 1
                    offset = batches[len(chosen) - 1].end_offset
                waits.append((part, offset))
            except ANSWERED as e:
                pd.error_code = int(error_code_for(e))
                errors = True
    remote: Remote = {}
    if proxied:
        # A zone proxy: the leader says where the tail is, the bytes come from shared storage.
        # What its Watch notices said is used as it is; the rest is asked for now.
        answers: dict[int, TailResult | BaseException] = {}
        by_leader: dict[int, list[int]] = {}
        watched: set[int] = set()
        for i, (_, item, leader) in enumerate(proxied):
            found = b.router.known_tail(item.topic, item.partition, item.offset, item.leader_epoch)
            if found is not None:
                answers[i] = found
                watched.add(i)
            else:
                by_leader.setdefault(leader.id, []).append(i)
        asked = await asyncio.gather(
            *(b.router.tail(proxied[idxs[0]][2], [proxied[i][1] for i in idxs]) for idxs in by_leader.values()),
            return_exceptions=True,
        )
        for idxs, got in zip(by_leader.values(), asked, strict=True):
            for n, i in enumerate(idxs):
                answers[i] = got if isinstance(got, BaseException) else got[n]
        for i, (pd, item, leader) in enumerate(proxied):
            res = answers[i]
            if isinstance(res, BaseException):
                pd.error_code = int(ErrorCode.NOT_LEADER_OR_FOLLOWER)
                errors = True
                continue
            if res.error_code:
                pd.error_code = res.error_code
                errors = True
                continue
            pd.high_watermark = pd.last_stable_offset = res.high_watermark
            pd.log_start_offset = res.log_start_offset
            if not res.log_start_offset <= item.offset <= res.high_watermark:
                pd.error_code = int(ErrorCode.OFFSET_OUT_OF_RANGE)
                errors = True
                continue
            offset = item.offset
            if offset < res.high_watermark:
                limit = min(item.max_bytes, remaining)
                try:
                    batches = await b.router.read_tail(res, offset, max(limit, 1))
                except StorageError as e:
                    pd.error_code = int(error_code_for(e))
                    errors = True
                    continue
                chosen, size = _choose(batches, limit, total)
                if chosen:
                    pd.records = chosen  # type: ignore[assignment]
                    total += size
                    remaining -= size
                    offset = batches[len(chosen) - 1].end_offset
                elif i in watched:
                    # What the notices located is gone (uploaded, the relay object deleted): the
                    # consumer's next fetch asks the leader, whose answer sends it to S3 objects.
                    b.router.forget(item.topic, item.partition)
            if offset >= res.high_watermark:
                remote.setdefault(leader.id, (leader, []))[1].append(
                    TailItem(item.topic, item.partition, offset, item.leader_epoch, item.max_bytes)
                )
    return out, total, errors, waits, remote


def _choose(batches: list[Batch], limit: int, total: int) -> tuple[list[bytes], int]:
    chosen: list[bytes] = []
    size = 0
    for batch in batches:
        n = len(batch.payload)
        # KIP-74: the first batch of the response goes out whatever its size, so a consumer
        # always makes progress; later ones only within both limits.
        if (total or chosen) and size + n > limit:
            break
        chosen.append(batch.payload)
        size += n
    return chosen, size


async def handle(ctx: RequestContext, request: FetchRequest) -> FetchResponse:
    if request.session_id != 0:
        return FetchResponse(error_code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND, session_id=0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(request.max_wait_ms, 0) / 1000
    min_bytes = max(request.min_bytes, 1)
    started = now()  # latency histograms: the passes over the partitions (read) and the long polls (wait)
    read_s = 0.0
    wait_s: float | None = None
    while True:
        pass_started = now()
        out, total, errors, waits, remote = await _read(ctx, request)
        read_s += now() - pass_started
        left = deadline - loop.time()
        if total >= min_bytes or errors or left <= 0 or not (waits or remote):
            ctx.broker.counters["fetch_bytes"] += total
            ctx.broker.count_client_bytes(ctx.client_id, request.rack_id or None, total, to_broker=False)
            ctx.broker.latency.fetched(started, read_s, wait_s)
            return out
        wait_started = now()
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
        # Proxied partitions: watched at their leaders, whose notices come as soon as their ends move.
        polls = [poll for leader, items in remote.values() for poll in ctx.broker.router.watch(leader, items)]
        wake_on = partial(_wake_on, wake)
        for poll in polls:
            poll.add_done_callback(wake_on)
        try:
            await wake
        finally:
            timer.cancel()
            _wake(wake)
            for poll in polls:
                poll.remove_done_callback(wake_on)
        if not polls and not any(p.ready.end_offset > off for p, off in waits) and deadline > loop.time():
            # Woken without data: a stream that stopped taking data (closed, fenced). Do not spin on it.
            await asyncio.sleep(min(0.05, deadline - loop.time()))
        wait_s = (wait_s or 0.0) + now() - wait_started


def _wake_on(wake: asyncio.Future[None], _moved: asyncio.Future[None]) -> None:
    # Also when a watch ended (its leader died, the partition moved): the next pass asks again.
    _wake(wake)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
