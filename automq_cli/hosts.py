"""What `amq controller start` and `amq broker start --controllers ...` check before they serve.

A process for another host fails at start, in one line, on what an operator can fix (an
unreachable database or controller, a bucket that is not there, a missing NFS mount),
rather than minutes later in a log, or in a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from engine.controller.config import WILDCARDS


class HostError(Exception):
    """One line for the user; the CLI prints it and exits non-zero."""


def parse_advertise(value: str) -> tuple[str, int]:
    """`host` or `host:port` (`[v6]:port`) -> (host, port or 0 for the bound one)."""
    text = value.strip()
    host, port = text, 0
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise HostError(f"--advertise {value!r} is not host:port")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise HostError(f"--advertise {value!r} is not host:port")
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, value)
    if not host or host in WILDCARDS:
        raise HostError(f"--advertise {value!r}: clients and brokers need an address they can connect to")
    return host, port


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise HostError(f"--advertise {value!r}: {text!r} is not a TCP port")
    return int(text)


def check_metadata(spec: str) -> None:
    """A PostgreSQL URL that answers with this amq's schema, or an SQLite file's directory that exists."""
    from engine.postgres import PgError, check_schema, connect, is_postgres_url, redact

    if is_postgres_url(spec):
        try:
            conn = connect(spec)
            try:
                check_schema(conn, spec)
            finally:
                conn.close()
        except PgError as e:
            raise HostError(str(e)) from None
        return
    if "://" in spec:
        raise HostError(
            f"--metadata {redact(spec)!r}: a postgresql://user:password@host:port/database URL "
            "(or, for brokers on one machine only, an SQLite file)"
        )
    parent = Path(spec).expanduser().parent
    if not parent.is_dir():
        raise HostError(f"--metadata {spec}: directory {parent} does not exist")


def check_controllers(spec: str, timeout: float) -> None:
    """Some controller of the list answers (a standby names the leader; the client follows it)."""
    from engine.controller import api
    from engine.controller.rpc import ControllerClient, RpcError, parse_addresses

    try:
        addresses = parse_addresses(spec)
    except ValueError as e:
        raise HostError(f"--controllers: {e} (expected host:port[,host:port...])") from None

    async def ping() -> None:
        client = ControllerClient(addresses, connect_timeout=min(3.0, timeout))
        try:
            await client.request(api.Ping(), timeout=timeout)
        finally:
            await client.close()

    try:
        asyncio.run(ping())
    except (RpcError, OSError, TimeoutError) as e:
        reason = str(e).strip() or type(e).__name__
        raise HostError(f"no controller at {spec} answered as leader within {timeout:g}s ({reason})") from None


def check_s3(s3: Any) -> None:
    """The bucket exists and the credentials open it. A broker never creates a bucket: on AWS that
    is the operator's choice of region, policy and lifecycle."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint or None,
        aws_access_key_id=s3.access_key or None,
        aws_secret_access_key=s3.secret_key or None,
        region_name=s3.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=3, read_timeout=5),
    )
    where = s3.endpoint or "AWS S3"
    try:
        client.head_bucket(Bucket=s3.bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise HostError(f"bucket {s3.bucket!r} does not exist at {where}: create it first") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise HostError(f"S3 at {where} refused the credentials for bucket {s3.bucket!r} ({code})") from None
        raise HostError(f"S3 at {where} answered {code or e}") from None
    except (BotoCoreError, ValueError) as e:
        raise HostError(f"S3 endpoint {where} is unreachable: {e}") from None


def check_wal_dir(kind: str, path: str) -> None:
    """nfs: the shared directory must already be there. Creating it would hide a missing mount:
    the WAL would go to a local disk that no survivor can read."""
    p = Path(path)
    if kind == "nfs":
        if not p.is_dir():
            raise HostError(f"--wal-dir {path} does not exist: mount the shared file system (NFS, EFS) and create it")
        if not os.access(p, os.W_OK | os.X_OK):
            raise HostError(f"--wal-dir {path} is not writable by this user")
    elif kind == "file":
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HostError(f"cannot create the WAL directory {path}: {e.strerror}") from None


def write_ready(path: str, info: dict[str, Any]) -> None:
    """For scripts and tests that start a process on port 0: its ports and pid, written atomically."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps({**info, "pid": os.getpid()}))
    os.replace(tmp, path)
