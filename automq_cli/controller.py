"""`amq controller start`: a controller for a cluster on several hosts, in the foreground (systemd runs it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from automq_cli.hosts import HostError, check_metadata, write_ready

app = typer.Typer(
    name="controller",
    help="Run a controller of a cluster on several hosts (docs/deploy.md).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"amq controller: error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def start(
    config: Annotated[
        str | None, typer.Option("--config", help="YAML file of controller settings; flags win over it.")
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option(
            "--metadata",
            envvar="AMQ_METADATA",
            show_default=False,
            help="postgresql://user:password@host:port/db shared by every controller and broker "
            "($AMQ_METADATA keeps the password out of ps). Without it: SQLite in --dir, one controller.",
        ),
    ] = None,
    dir: Annotated[
        str | None, typer.Option("--dir", help="Directory for controller.db (SQLite) (default ~/.amq/controller)")
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Address to bind (default 127.0.0.1); 0.0.0.0 needs --advertise.")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="RPC port (default 9093); 0 = any free port.")] = None,
    advertise: Annotated[
        str | None, typer.Option("--advertise", help="host:port brokers and the other controllers reach this one at.")
    ] = None,
    lease_ttl_ms: Annotated[
        int | None, typer.Option("--lease-ttl-ms", help="A leader silent this long loses the lease (default 3000).")
    ] = None,
    session_timeout_ms: Annotated[
        int | None, typer.Option("--session-timeout-ms", help="A broker silent this long is fenced (default 3000).")
    ] = None,
    ready_file: Annotated[
        str | None,
        typer.Option("--ready-file", help="Once listening, write {port, address, pid} here as JSON (for scripts)."),
    ] = None,
) -> None:
    """Run a controller until SIGTERM. Several on one PostgreSQL database: one leads, the others stand by."""
    from engine.controller.__main__ import serve
    from engine.controller.config import ControllerConfig, ControllerConfigError
    from engine.postgres import PgError, redact

    raw: dict[str, Any] = {}
    try:
        if config:
            raw = {str(k).replace("-", "_"): v for k, v in ControllerConfig.load(config).items()}
        flags = {"metadata": metadata, "dir": dir, "listen": listen, "port": port, "advertise": advertise,
                 "lease_ttl_ms": lease_ttl_ms, "session_timeout_ms": session_timeout_ms}  # fmt: skip
        raw.update({k: v for k, v in flags.items() if v is not None})
        if not raw.get("dir"):
            from automq_cli.cluster.state import amq_home

            raw["dir"] = str(amq_home() / "controller")
        cfg = ControllerConfig.from_dict(raw)
    except ControllerConfigError as e:
        raise _fail(str(e)) from None
    try:
        Path(cfg.dir).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f"cannot use {cfg.dir} as the controller's directory: {e.strerror}") from None
    if cfg.metadata:
        try:
            check_metadata(cfg.metadata)
        except HostError as e:
            raise _fail(str(e)) from None

    def listening(server: Any) -> None:
        where = redact(cfg.metadata) if cfg.metadata else f"SQLite in {cfg.dir}"
        typer.echo(f"controller listening on {cfg.listen}:{server.port} (brokers reach it at {server.address}); "
                   f"metadata: {where}")  # fmt: skip
        if ready_file:
            write_ready(ready_file, {"port": server.port, "address": server.address})

    try:
        serve(cfg, on_listening=listening)
    except OSError as e:
        raise _fail(f"cannot serve on {cfg.listen}:{cfg.port}: {e.strerror or e}") from None
    except PgError as e:
        raise _fail(str(e)) from None
    except Exception as e:
        # A bug, not bad input: its traceback goes to the log (the journal), the summary last.
        logging.getLogger("amq.controller").error("the controller failed", exc_info=True)
        raise _fail(f"the controller stopped: {type(e).__name__}: {e}") from None
