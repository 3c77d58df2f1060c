"""Controllers and brokers started by hand, as on hosts of their own: `amq controller start` and
`amq broker start --node-id N --controllers ...` as subprocesses, each stopped by its pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class HostProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_file: Path
    info: dict[str, Any] = field(default_factory=dict)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {timeout:.0f}s: {self.tail()}")
            time.sleep(0.05)
        self.info = json.loads(self.ready_file.read_text())
        return self.info

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a controlled stop), SIGKILL after `timeout`; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def amq_process(
    name: str, args: list[str], directory: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> HostProcess:
    """`amq <args> --ready-file ...` in the foreground of a new session, its output in a log.

    prefix: a command to run it under (`ip netns exec NS`)."""
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / f"{name}.ready"
    log = directory / f"{name}.log"
    cmd = [*(prefix or []), sys.executable, "-m", "automq_cli.main", *args, "--ready-file", str(ready)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    return HostProcess(name, proc, log, ready)
