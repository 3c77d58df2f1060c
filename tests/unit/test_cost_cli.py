"""`amq cost` end to end: the default comparison, scenarios, JSON, --from-run, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from automq_cli import cost

FIXTURE = Path(__file__).parent / "fixtures" / "cost_perf_run.json"
REPO = Path(__file__).resolve().parents[2]
MONTH_S = 730 * 3600

root = typer.Typer()
root.add_typer(cost.app, name="cost")
runner = CliRunner()


def _run(*args: str) -> Any:
    result = runner.invoke(root, ["cost", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _json(*args: str) -> dict[str, Any]:
    return json.loads(_run(*args, "--json").stdout)


def _system(out: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in out["systems"] if s["system"] == name)


def _line(system: dict[str, Any], key: str) -> dict[str, Any]:
    return next(line for line in system["lines"] if line["key"] == key)


def test_no_arguments_prints_a_default_comparison() -> None:
    out = _run().stdout
    for text in ("amq, S3 WAL", "amq, block-volume WAL", "amq, FSx ONTAP WAL", "Apache Kafka, RF 3",
                 "Compute", "WAL storage", "Object storage", "S3 API calls", "Block storage",
                 "Cross-zone traffic", "Total", "Saving vs Kafka", "side by side"):
        assert text in out, text


def test_json_has_every_system_and_line() -> None:
    out = _json()
    assert [s["system"] for s in out["systems"]] == ["amq-s3", "amq-file", "amq-nfs", "kafka"]
    for system in out["systems"]:
        keys = [line["key"] for line in system["lines"]]
        assert keys == ["compute", "wal", "object_storage", "s3_api", "block_storage", "block_throughput",
                        "cross_zone"]


def test_scenario_reproduces_the_published_totals() -> None:
    out = _json("--scenario", "fsx-1gib-3d")
    assert _system(out, "amq-nfs")["total_usd_per_month"] == pytest.approx(18345, rel=0.02)
    assert _system(out, "kafka")["total_usd_per_month"] == pytest.approx(317092, rel=0.02)
    assert _system(out, "amq-nfs")["saving_vs_kafka"]["percent"] == pytest.approx(94.2, abs=0.2)


def test_flags_override_the_scenario() -> None:
    out = _json("--scenario", "fsx-1gib-3d", "--wal", "s3", "--instances", "auto", "--retention", "1d")
    assert [s["system"] for s in out["systems"]] == ["amq-s3", "kafka"]
    assert out["workload"]["retention_hours"] == 24
    assert "sized:" in _system(out, "amq-s3")["notes"][0]


def test_write_scales_a_scenario_profile() -> None:
    out = _json("--scenario", "kafka-peak-1gib-24h", "--write", "512MiB/s")
    assert max(out["workload"]["profile_mib_s"]) == pytest.approx(512)
    assert out["workload"]["write_mib_s_mean"] == pytest.approx(1960 / 24 / 2)


def test_profile_flag() -> None:
    out = _json("--profile", ",".join(["10"] * 23 + ["1GiB/s"]), "--wal", "s3")
    assert out["workload"]["write_mib_s_peak"] == 1024
    compute = _line(_system(out, "amq-s3"), "compute")["amounts"]
    assert compute["instances_min"] < compute["instances_max"]


def test_scenarios_command_lists_templates() -> None:
    out = _run("scenarios").stdout
    assert "fsx-1gib-3d" in out and "kafka-peak-1gib-24h" in out


def test_brief_prints_only_the_side_by_side_table() -> None:
    out = _run("--brief").stdout
    assert "side by side" in out and "Quantity" not in out


# --- --from-run ---

def _fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_from_run_prices_the_runs_counts() -> None:
    run = _fixture()
    out = _json("--from-run", str(FIXTURE), "--scale-to", "1GiB/s")
    assert [s["system"] for s in out["systems"]] == ["amq-s3", "kafka"]  # the run's WAL kind
    assert out["workload"]["write_mib_s_peak"] == 1024
    assert out["workload"]["read_fanout"] == pytest.approx(2.0)  # 40 MiB/s read of 20 written
    produced_mib = run["produce"]["bytes"] / 2**20
    s3 = _line(_system(out, "amq-s3"), "s3_api")["amounts"]
    assert s3["from_run"] == 1.0
    assert s3["put"] == pytest.approx(run["cluster"]["s3"]["put"] / produced_mib * 1024 * MONTH_S)
    assert s3["get"] == pytest.approx(run["cluster"]["s3"]["get"] / produced_mib * 1024 * MONTH_S)
    assert s3["list"] == pytest.approx(run["cluster"]["s3"]["list"] / produced_mib * 1024 * MONTH_S)
    cross = _line(_system(out, "amq-s3"), "cross_zone")["amounts"]
    per_byte = run["cluster"]["cross_zone_bytes"] / run["produce"]["bytes"]
    assert cross["gib"] == pytest.approx(per_byte * 1024 * MONTH_S / 1024)
    assert cross["gib"] > 0  # the model alone would say 0 with zone routing


def test_from_run_unusual_counts_change_the_lines(tmp_path: Path) -> None:
    run = _fixture()
    run["cluster"]["s3"].update(put=123_456, get=7, list=0)
    run["cluster"]["cross_zone_bytes"] = run["produce"]["bytes"] // 4
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(run))
    base = _json("--from-run", str(FIXTURE), "--scale-to", "100MiB/s")
    odd = _json("--from-run", str(path), "--scale-to", "100MiB/s")
    base_s3 = _line(_system(base, "amq-s3"), "s3_api")
    odd_s3 = _line(_system(odd, "amq-s3"), "s3_api")
    produced_mib = run["produce"]["bytes"] / 2**20
    assert odd_s3["amounts"]["put"] == pytest.approx(123_456 / produced_mib * 100 * MONTH_S)
    assert odd_s3["amounts"]["get"] == pytest.approx(7 / produced_mib * 100 * MONTH_S)
    assert odd_s3["usd_per_month"] > 100 * base_s3["usd_per_month"]
    odd_cross = _line(_system(odd, "amq-s3"), "cross_zone")["amounts"]["gib"]
    assert odd_cross == pytest.approx(0.25 * 100 * MONTH_S / 1024)
    # The Kafka side is the model's and does not move with the run's counts.
    assert _system(odd, "kafka")["total_usd_per_month"] == _system(base, "kafka")["total_usd_per_month"]


def test_from_run_without_counts_falls_back_and_says_so(tmp_path: Path) -> None:
    run = _fixture()
    del run["cluster"]["s3"]
    del run["cluster"]["cross_zone_bytes"]
    path = tmp_path / "no-counts.json"
    path.write_text(json.dumps(run))
    out = _json("--from-run", str(path), "--scale-to", "1GiB/s")
    assert _line(_system(out, "amq-s3"), "s3_api")["amounts"]["from_run"] == 0.0
    assert any("not in the run" in note for note in out["notes"])
    text = _run("--from-run", str(path), "--scale-to", "1GiB/s").stdout
    assert "not in the run" in text and "model's assumptions" in text


def test_from_run_zone_mismatch_does_not_reuse_cross_zone_bytes() -> None:
    out = _json("--from-run", str(FIXTURE), "--zones", "1")
    assert _line(_system(out, "amq-s3"), "cross_zone")["usd_per_month"] == 0
    assert any("do not carry over" in note for note in out["notes"])


# --- bad input: one line on stderr, exit status 2, no traceback ---

@pytest.mark.parametrize(("args", "needle"), [
    (["--write", "-5MiB/s"], "must not be negative"),
    (["--write=-1"], "must not be negative"),
    (["--fanout", "-1"], "must not be negative"),
    (["--instance", "m9.huge"], "unknown instance type 'm9.huge'"),
    (["--kafka-instance", "x1.tiny"], "unknown instance type 'x1.tiny'"),
    (["--price", "s3_standard.put=1"], "unknown pricing key 's3_standard.put'"),
    (["--price", "oops"], "KEY=VALUE"),
    (["--pricing", "/nonexistent/pricing.yaml"], "cannot read pricing table"),
    (["--from-run", "/nonexistent/run.json"], "cannot read run file"),
    (["--scenario", "no-such-scenario"], "no scenario"),
    (["--scale-to", "1GiB/s"], "--scale-to needs --from-run"),
    (["--zones", "0"], "zones"),
    (["--wal", "tape"], "unknown WAL kind"),
    (["--over-provisioning", "1.5"], "over-provisioning"),
    (["--assume", "upload_mib=3"], "unknown assumption"),
    (["--write", "1GiB/s", "--profile", "1,2,3"], "either --write or --profile"),
    (["--retention", "forever"], "cannot read retention"),
])
def test_bad_input_is_one_line(args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "automq_cli.main", "cost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("amq cost: error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_run_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(root, ["cost", "--from-run", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith("amq cost: error: run file") and result.stderr.count("\n") == 1


def test_docs_show_the_real_output() -> None:
    docs = (REPO / "docs" / "cost.md").read_text()
    out = _run("--scenario", "fsx-1gib-3d", "--brief").stdout
    for line in out.splitlines():
        if line.strip():
            assert line.rstrip() in docs, f"docs/cost.md is stale; missing: {line.rstrip()!r}"
