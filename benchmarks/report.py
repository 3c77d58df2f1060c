"""What every benchmark's BENCHMARKS.md section shares: the machine line and the section's replacement."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sys
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.platform()}, Python {platform.python_version()}"


def write_section(path: Path, begin: str, end: str, body: list[str]) -> None:
    """Replace the text between the markers (or append the section when they are absent)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "\n".join([begin, *body, end])
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def provenance(script: str) -> list[str]:
    """The Date, Machine and Command lines of a section, for the script run as it was."""
    cmd = f"python3 {script}" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"- Date: {now}", f"- Machine: {machine()}", f"- Command: `{cmd}`"]
