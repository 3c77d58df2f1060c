"""The `amq` command line: `amq <noun> <verb>`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="amq",
    help="Run and measure a diskless, Kafka-compatible cluster: on this machine, or on several hosts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each noun lives in its own module; importing here keeps `amq --help` complete.
    from automq_cli import cost

    app.add_typer(cost.app, name="cost")
    from automq_cli import perf

    app.add_typer(perf.app, name="perf")
    from automq_cli import cluster

    app.add_typer(cluster.app, name="cluster")
    from automq_cli import broker

    app.add_typer(broker.app, name="broker")
    from automq_cli import controller

    app.add_typer(controller.app, name="controller")
    from automq_cli import topic

    app.add_typer(topic.app, name="topic")
    from automq_cli import reassign

    app.command(name="reassign")(reassign.reassign)
    from automq_cli import scale

    app.add_typer(scale.app, name="scale")
    from automq_cli import storage

    app.add_typer(storage.app, name="storage")
    from automq_cli import metadata

    app.add_typer(metadata.app, name="metadata")
    from automq_cli import chaos

    app.add_typer(chaos.app, name="chaos")


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
