"""`python -m engine.broker --config FILE`: one broker process (started by `amq cluster up`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from engine.broker.broker import Broker
from engine.broker.config import BrokerConfig, BrokerConfigError


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
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        pass

    async def run() -> None:
        broker = Broker(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await broker.start()
        except BaseException:
            await broker.stop(flush=False)
            raise
        if args.ready_file:
            _write_ready(args.ready_file, broker)
        await stop.wait()
        logging.getLogger("engine.broker").info("stopping: uploading what the WAL holds")
        await broker.stop(flush=True)

    try:
        asyncio.run(run())
    except OSError as e:
        print(f"broker: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
