"""kafka-python's own integration tests (from its 3.0.12 sdist) against a local amq cluster.

The sdist ships `test/integration/` but not `test/service.py` or a Kafka install; the stand-ins
live in tests/integration/kafka_python_suite/, with EXCLUSIONS.md naming every test not run and why.
The sdist is downloaded once with pip and cached under ~/.cache/amq/kafka-python-3.0.12.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.cluster_fixture import LocalCluster

VERSION = "3.0.12"
# The broker advertises Apache Kafka 2.8's API maxima (docs/protocol.md), so kafka-python infers 2.8.
KAFKA_VERSION = "2.8"
SUITE_DIR = Path(__file__).parent / "kafka_python_suite"
CACHE_DIR = Path.home() / ".cache" / "amq" / f"kafka-python-{VERSION}"
SDIST_NAME = f"kafka_python-{VERSION}.tar.gz"
RUN_TIMEOUT_S = 420
_EXCLUSION = re.compile(r"^\s*[-*]\s+`([^`]+)`")
# pytest's headers of failures (`____ test_x[a] ____`) and its short summary lines.
_NOTABLE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
_FAILED = re.compile(r"^(_{3,} \S.* _{3,}|(FAILED|ERROR) \S+)")


def exclusions(text: str) -> list[str]:
    """The backticked path or test id that starts each list item of EXCLUSIONS.md."""
    return [m.group(1) for line in text.splitlines() if (m := _EXCLUSION.match(line))]


def exclusion_args(excluded: list[str]) -> list[str]:
    args: list[str] = []
    for item in excluded:
        args += ["--deselect", item] if "::" in item else ["--ignore", item]
    return args


def _client_log(lines: list[str], keep: int = 60) -> str:
    """The start and end of the first failed test's captured client log: what kafka-python asked
    and was answered (metadata, assignment, offset resets, fetches) before the assertion."""
    try:
        start = lines.index("------------------------------ Captured log call -------------------------------") + 1
    except ValueError:
        return "(no client log captured)"
    end = next(
        (i for i in range(start, len(lines)) if _FAILED.match(lines[i]) or lines[i].startswith("====")), len(lines)
    )
    log = [ln[:240] for ln in lines[start:end]]
    if len(log) > 2 * keep:
        log = [*log[:keep], f"... {len(log) - 2 * keep} lines ...", *log[-keep:]]
    return "the failed test's client log (kafka-python, DEBUG):\n" + "\n".join(log)


def test_client_log_keeps_the_start_and_end_of_the_first_failure() -> None:
    header = "------------------------------ Captured log call -------------------------------"
    lines = ["____ test_a ____", header, *(f"DEBUG line {i}" for i in range(10)), "____ test_b ____", "x"]
    kept = ["DEBUG line 0", "DEBUG line 1", "DEBUG line 2", "... 4 lines ...", "DEBUG line 7", "DEBUG line 8"]
    assert _client_log(lines, keep=3).splitlines()[1:] == [*kept, "DEBUG line 9"]
    assert _client_log(["no log"]) == "(no client log captured)"


def test_exclusions_parse() -> None:
    text = "intro `not/this.py`\n- `a/b.py`: why\n  - `a/c.py::test_x`: why not\n* plain text\n"
    assert exclusions(text) == ["a/b.py", "a/c.py::test_x"]
    assert exclusion_args(exclusions(text)) == ["--ignore", "a/b.py", "--deselect", "a/c.py::test_x"]


def sdist() -> Path:
    """The cached sdist, fetched from PyPI with pip the first time."""
    path = CACHE_DIR / SDIST_NAME
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, f"kafka-python=={VERSION}", "-d", str(CACHE_DIR)], check=True, timeout=300)
    return path


def unpack(archive: Path, dest: Path) -> Path:
    """The sdist unpacked into `dest`, with the stand-ins it needs to run its integration tests."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    root = dest / f"kafka_python-{VERSION}"
    (root / "test" / "__init__.py").touch()
    shutil.copy(SUITE_DIR / "service.py", root / "test" / "service.py")
    # The fixtures check that a Kafka install directory exists even when the broker is external.
    (root / "servers" / "kafka-bin").mkdir(parents=True)
    return root


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_kafka_python_integration_suite(broker_cluster: LocalCluster, tmp_path: Path) -> None:
    root = unpack(sdist(), tmp_path)
    excluded = exclusions((SUITE_DIR / "EXCLUSIONS.md").read_text())
    missing = [e for e in excluded if not (root / e.partition("::")[0]).exists()]
    assert not missing, f"EXCLUSIONS.md names files the sdist does not have: {missing}"
    env = {
        **os.environ,
        "KAFKA_URI": f"kafka://127.0.0.1:{broker_cluster.port}",
        "KAFKA_VERSION": KAFKA_VERSION,
        "KAFKA_ROOT": str(root / "servers" / "kafka-bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "test/integration",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:warnings",
        "-rfEs",
    ]
    # The clients' DEBUG log is kept per test and shown only for a failed one (see _client_log).
    cmd += ["--log-level=DEBUG", *exclusion_args(excluded)]
    log_start = broker_cluster.broker_log.stat().st_size
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:  # run() has killed the child by now
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"kafka-python's integration tests ran past {RUN_TIMEOUT_S} s:\n{out[-8000:]}")
    lines = proc.stdout.splitlines()
    tail = "\n".join(lines[-80:])
    print(tail)  # the summary, shown with -s or -rP
    # A long assertion diff can push the names of the failed tests out of the tail: name them first.
    failed = "\n".join(line[:200] for line in lines if _FAILED.match(line))
    if proc.returncode != 0:
        with broker_cluster.broker_log.open("rb") as f:
            f.seek(log_start)
            logged = f.read().decode(errors="replace").splitlines()
        warned = [ln[:300] for ln in logged if _NOTABLE.search(ln)]
        pytest.fail(
            f"kafka-python's integration tests failed (exit {proc.returncode}):\n{failed}\n"
            f"broker warnings meanwhile ({len(warned)}, the last 30):\n" + "\n".join(warned[-30:]) + "\n"
            "the broker log's last 15 lines:\n" + "\n".join(ln[:300] for ln in logged[-15:]) + "\n"
            f"{_client_log(lines)}\n{tail}"
        )
    assert " passed" in tail, tail
