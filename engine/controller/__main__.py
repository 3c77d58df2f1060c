"""`python -m engine.controller --dir DIR --port PORT`: the controller process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from engine.controller.autobalance import BalancerSettings
from engine.controller.config import ControllerConfig
from engine.controller.server import ControllerServer
from engine.postgres import PgError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.controller", description="amq controller")
    parser.add_argument("--dir", required=True, help="directory for controller.db (and logs)")
    parser.add_argument(
        "--metadata",
        default=os.environ.get("AMQ_METADATA", ""),
        help="postgresql://... for the cluster's state (default: SQLite, controller.db in --dir; or $AMQ_METADATA)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9093, help="RPC port (0 = any free port)")
    parser.add_argument(
        "--session-timeout-ms", type=int, default=3000, help="a broker silent this long is fenced, its WAL taken over"
    )
    parser.add_argument(
        "--lost-grace-ms",
        type=int,
        default=1500,
        help="a broker whose connection closed and that is silent this long is fenced (at most the session timeout)",
    )
    parser.add_argument("--no-auto-balance", action="store_true", help="do not move partitions to even the load")
    parser.add_argument("--balance-interval-ms", type=int, default=5000, help="how often the balancer plans")
    parser.add_argument("--balance-cooldown-s", type=float, default=60.0, help="a moved partition stays this long")
    parser.add_argument("--balance-max-moves", type=int, default=32, help="moves per balancer round at most")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument(
        "--lease-ttl-ms",
        type=int,
        default=3000,
        help="with PostgreSQL: a leader silent this long loses the lease to a standby",
    )
    parser.add_argument("--advertise", default="", help="host:port brokers reach this controller at")
    args = parser.parse_args(argv)
    cfg = ControllerConfig(
        dir=args.dir, metadata=args.metadata, listen=args.host, port=args.port, advertise=args.advertise,
        session_timeout_ms=args.session_timeout_ms, lost_grace_ms=args.lost_grace_ms, lease_ttl_ms=args.lease_ttl_ms,
        auto_balance=not args.no_auto_balance, balance_interval_ms=args.balance_interval_ms,
        balance_cooldown_s=args.balance_cooldown_s, balance_max_moves=args.balance_max_moves,
    )  # fmt: skip
    try:
        serve(cfg, on_listening=_port_file_writer(args.port_file))
    except (OSError, PgError) as e:
        print(f"controller: {e}", file=sys.stderr)
        return 1
    return 0


def _port_file_writer(path: str | None) -> Callable[[ControllerServer], None] | None:
    if not path:
        return None

    def write(server: ControllerServer) -> None:
        with open(path, "w") as f:
            f.write(str(server.port))

    return write


def serve(cfg: ControllerConfig, on_listening: Callable[[ControllerServer], None] | None = None) -> None:
    """Run one controller in this process until SIGTERM or SIGINT; OSError/PgError when it cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        pass

    async def run() -> None:
        balancer = BalancerSettings(
            enabled=cfg.auto_balance,
            interval_s=max(0.05, cfg.balance_interval_ms / 1000),
            cooldown_s=cfg.balance_cooldown_s,
            max_moves=max(1, cfg.balance_max_moves),
        )
        server = ControllerServer(
            cfg.dir, cfg.listen, cfg.port, cfg.session_timeout_ms, cfg.lost_grace_ms, balancer=balancer,
            metadata=cfg.metadata, lease_ttl_ms=cfg.lease_ttl_ms, advertise=cfg.advertise,
        )  # fmt: skip
        await server.start()
        if on_listening is not None:
            on_listening(server)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(run())
    with contextlib.suppress(Exception):
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
