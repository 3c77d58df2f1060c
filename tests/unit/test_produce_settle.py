"""Produce answers built by callbacks (produce._settle): durable, failed, cancelled, timed out."""

from __future__ import annotations

import asyncio

from engine.broker.errors import BrokerError
from engine.broker.handlers.produce import PartitionResponse, _settle
from engine.broker.partition import AppendResult
from engine.protocol import ErrorCode
from engine.protocol.messages import ProduceResponse
from engine.util.futures import when_all

Pending = list[tuple[PartitionResponse, AppendResult]]


def _pending(loop: asyncio.AbstractEventLoop, n: int) -> tuple[ProduceResponse, Pending]:
    out = ProduceResponse()
    tr = ProduceResponse.TopicProduceResponse(name="t")
    out.responses.append(tr)
    pending: Pending = []
    for i in range(n):
        resp = PartitionResponse(index=i, base_offset=100 + i, log_append_time_ms=-1, log_start_offset=0)
        tr.partition_responses.append(resp)
        pending.append((resp, AppendResult(100 + i, loop.create_future())))
    return out, pending


def test_answers_once_every_append_is_durable() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        out, pending = _pending(loop, 3)
        answer = _settle(out, pending, -1, 30_000)
        pending[0][1].done.set_result(100)
        pending[2][1].done.set_result(102)
        await asyncio.sleep(0)
        assert not answer.done()  # one append is still on its way to the WAL
        pending[1][1].done.set_result(101)
        got = await asyncio.wait_for(answer, 1)
        codes = [(p.index, p.error_code, p.base_offset) for p in got.responses[0].partition_responses]
        assert codes == [(0, 0, 100), (1, 0, 101), (2, 0, 102)]

    asyncio.run(run())


def test_failed_cancelled_and_late_appends_get_their_own_errors() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        out, pending = _pending(loop, 4)
        answer = _settle(out, pending, -1, 50)
        pending[0][1].done.set_result(100)
        pending[1][1].done.set_exception(BrokerError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "moved"))
        pending[2][1].done.cancel()
        started = loop.time()
        got = await asyncio.wait_for(answer, 5)  # the fourth never becomes durable
        assert loop.time() - started >= 0.04
        parts = got.responses[0].partition_responses
        assert [p.error_code for p in parts] == [
            0,
            ErrorCode.NOT_LEADER_OR_FOLLOWER,
            ErrorCode.NOT_LEADER_OR_FOLLOWER,
            ErrorCode.REQUEST_TIMED_OUT,
        ]
        assert [p.base_offset for p in parts] == [100, -1, -1, -1]
        # An append that turns durable after its answer left changes nothing.
        pending[3][1].done.set_result(103)
        await asyncio.sleep(0)
        assert parts[3].base_offset == -1

    asyncio.run(run())


def test_acks_zero_answers_at_once() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        out, pending = _pending(loop, 2)
        answer = _settle(out, pending, 0, 30_000)
        assert answer.done() and answer.result() is out

    asyncio.run(run())


def test_when_all_calls_once_when_all_are_done_or_at_the_timeout() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        a, b = loop.create_future(), loop.create_future()
        when_all([a, b], 10.0, lambda: calls.append("all"))
        a.set_result(1)
        await asyncio.sleep(0)
        assert calls == []  # one still waits
        b.set_result(2)
        await asyncio.sleep(0)
        assert calls == ["all"]
        late = loop.create_future()
        when_all([late], 0.01, lambda: calls.append("timeout"))
        await asyncio.sleep(0.05)
        late.set_result(3)  # after the timeout: not a second call
        await asyncio.sleep(0)
        assert calls == ["all", "timeout"]
        when_all([], 10.0, lambda: calls.append("none"))
        assert calls[-1] == "none"  # nothing to wait for: at once

    asyncio.run(run())
