"""`python -m engine.broker --config FILE`: one broker process (started by `amq cluster up`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable

from engine.broker.broker import Broker
from engine.broker.config import BrokerConfig, BrokerConfigError
from engine.devtools import stalls


def _write_ready(path: str, broker: Broker) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"port": broker.port, "metrics_port": broker.metrics_port, "pid": os.getpid()}, f)
    os.replace(tmp, path)  # readers never see half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.broker", description="amq broker")
    parser.add_argument("--config", required=True, help="broker settings (JSON or YAML)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--ready-file", help="once serving, write {port, metrics_port, pid} here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = BrokerConfig.load(args.config)
    except (OSError, BrokerConfigError) as e:
        print(f"broker: {e}", file=sys.stderr)
        return 2
    try:
        serve(config, on_ready=(lambda b: _write_ready(args.ready_file, b)) if args.ready_file else None)
    except OSError as e:
        print(f"broker: {e}", file=sys.stderr)
        return 1
    return 0


def _tune_malloc() -> None:
    """What `amq cluster up` sets by environment (automq_cli/cluster/processes.py says why), for
    a broker started otherwise (systemd, a shell): glibc's dynamic mmap threshold and one arena
    per thread kept freed MiB-sized buffers in fragmented heaps (RSS 2.4 GiB at 75 MiB/s)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return
    m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(m_mmap_threshold, 128 * 1024)
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(m_arena_max, 2)


#: How long a thread may keep the GIL while another waits for it (Python's default: 5 ms). The
#: event loop acknowledges appends and gives the GIL up at every syscall; the WAL writer, uploads,
#: compaction and the metadata store run in threads, and each time one of them held the GIL the
#: loop waited up to a whole interval to get it back. Measured (benchmarks/lifecycle.py, compaction
#: on): event-loop lag p99 46 -> 19 ms, publish p99 424 -> 327 ms; produce throughput unchanged.
GIL_SWITCH_INTERVAL_S = 0.001


def serve(config: BrokerConfig, on_ready: Callable[[Broker], None] | None = None) -> None:
    """Run one broker in this process until SIGTERM or SIGINT, then upload what its WAL holds."""
    _tune_malloc()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        pass

    async def run() -> None:
        broker = Broker(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        tracer = stalls.maybe_start(loop)  # AMQ_STALL_TRACE: a development tool
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await broker.start()
        except BaseException:
            await broker.stop(flush=False)
            raise
        if on_ready is not None:
            on_ready(broker)
        await stop.wait()
        logging.getLogger("engine.broker").info("stopping: uploading what the WAL holds")
        await broker.stop(flush=True)
        if tracer is not None:
            tracer.stop()

    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
