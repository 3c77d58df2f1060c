"""`amq metadata init|migrate|status --metadata postgresql://...`: the metadata database's schema.

amq never changes a schema on its own: brokers and controllers refuse a database whose
schema is missing, older or newer than theirs, and these commands create or upgrade it.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="metadata",
    help="Create, upgrade or inspect the schema of a PostgreSQL metadata database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

MetadataOpt = Annotated[
    str,
    typer.Option(
        "--metadata",
        envvar="AMQ_METADATA",
        help="postgresql://user:password@host:port/database (or $AMQ_METADATA, which keeps the password out of ps)",
        show_default=False,
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"amq metadata: error: {message}", err=True)
    return typer.Exit(1)


@app.command()
def init(metadata: MetadataOpt) -> None:
    """Create amq's tables in an empty database."""
    from engine.postgres import PgError, migrate, redact

    try:
        _, after = migrate(metadata, init=True)
    except PgError as e:
        raise _fail(str(e)) from None
    typer.echo(f"initialized {redact(metadata)} at schema version {after}")


@app.command(name="migrate")
def migrate_cmd(metadata: MetadataOpt) -> None:
    """Upgrade amq's tables to this version's schema (creates them if the database is empty)."""
    from engine.postgres import PgError, migrate, redact

    try:
        before, after = migrate(metadata)
    except PgError as e:
        raise _fail(str(e)) from None
    if before == after:
        typer.echo(f"{redact(metadata)} is at schema version {after}: nothing to do")
    else:
        typer.echo(f"migrated {redact(metadata)} from schema version {before} to {after}")


@app.command()
def status(metadata: MetadataOpt) -> None:
    """The schema version, and whether this amq can use the database."""
    from engine.postgres import SCHEMA_VERSION, PgError, check_schema, connect, redact, schema_version

    try:
        conn = connect(metadata)
        try:
            have = schema_version(conn)
            typer.echo(f"{redact(metadata)}: schema version {have} (this amq: {SCHEMA_VERSION})")
            check_schema(conn, metadata)
        finally:
            conn.close()
    except PgError as e:
        raise _fail(str(e)) from None
