"""A private PostgreSQL server for tests and `amq cluster up --metadata postgres`.

It listens on 127.0.0.1 only (no Unix socket), on a free port, with its data in
the given directory, password authentication, and is stopped by its pid. The
binaries come from PATH or the Debian package's /usr/lib/postgresql/*/bin.
PostgreSQL refuses to run as root: when amq runs as root, the server runs as the
`postgres` user if there is one, else as `nobody`, and owns its data directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.util.ports import free_port


class PgServerError(RuntimeError):
    pass


def pg_bindir() -> Path:
    """Where initdb and postgres are; PgServerError with what to install when nowhere."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent

    def version(p: str) -> tuple[int, ...]:
        digits = Path(p).parent.name.split(".")
        return tuple(int(d) for d in digits if d.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    raise PgServerError(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in /usr/lib/postgresql/*/bin: "
        "install them (Debian: apt-get install postgresql)"
    )


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PgServerError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


def _user_kwargs(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class PgInfo:
    port: int
    user: str
    password: str
    pid: int

    def url(self, database: str = "amq") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"


class PostgresServer:
    """One postgres process; `durable=False` turns fsync off (tests: nothing survives them anyway)."""

    def __init__(self, directory: str | os.PathLike[str], *, durable: bool = True, port: int = 0) -> None:
        self.directory = Path(directory)
        self.durable = durable
        self.requested_port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: PgInfo | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def _init(self, user: pwd.struct_passwd | None) -> str:
        """initdb once; the superuser's password is kept in the directory (readable by amq only)."""
        secret = self.directory / "password"
        if (self.data / "PG_VERSION").exists() and secret.exists():
            return secret.read_text().strip()
        password = secrets.token_hex(16)
        self.data.mkdir(parents=True, exist_ok=True)
        pwfile = self.directory / "pwfile"
        pwfile.write_text(password + "\n")
        if user is not None:
            for p in (self.directory, self.data, pwfile):
                os.chown(p, user.pw_uid, user.pw_gid)
        os.chmod(self.data, 0o700)
        cmd = [str(pg_bindir() / "initdb"), "-D", str(self.data), "-U", "amq", "--auth=scram-sha-256",
               f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync"]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **_user_kwargs(user))
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise PgServerError(f"initdb failed: {last}")
        secret.write_text(password + "\n")
        os.chmod(secret, 0o600)
        return password

    def start(self, timeout: float = 60.0) -> PgInfo:
        user = _run_as()
        self.directory.mkdir(parents=True, exist_ok=True)
        password = self._init(user)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        if user is not None:
            os.chown(self.log_path, user.pw_uid, user.pw_gid)
        port = self.requested_port or free_port()
        args = [str(pg_bindir() / "postgres"), "-D", str(self.data), "-p", str(port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                "-c", "max_connections=200", "-c", "shared_buffers=32MB"]  # fmt: skip
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            **_user_kwargs(user),
        )  # fmt: skip
        log.close()
        self.info = PgInfo(port, "amq", password, self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                code, self.proc = self.proc.returncode, None
                raise PgServerError(f"postgres exited with code {code}: {tail[0]}")
            if self._ready():
                self.ensure_database("amq")
                return self.info
            time.sleep(0.1)
        self.stop()
        raise PgServerError(f"postgres did not accept connections within {timeout:.0f}s; see {self.log_path}")

    def _ready(self) -> bool:
        import psycopg

        assert self.info is not None
        try:
            with psycopg.connect(self.info.url("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def ensure_database(self, name: str) -> str:
        """Create the database if it is missing; its URL."""
        import psycopg
        from psycopg import sql

        assert self.info is not None
        with psycopg.connect(self.info.url("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.info.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        assert self.info is not None
        with psycopg.connect(self.info.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, data is checkpointed), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
