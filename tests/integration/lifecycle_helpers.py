"""Helpers for object-lifecycle tests against a real cluster: S3 listings by boto3, quick lifecycle settings."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import yaml

from tests.integration.cluster_fixture import LocalCluster, start_local_cluster

#: Short intervals so a test sees retention, compaction and garbage collection within seconds.
QUICK = {"upload_interval_s": 0.5, "lifecycle_interval_s": 0.3, "gc_grace_s": 0.5, "prepared_timeout_s": 5.0,
         "compaction_min_lag_s": 0.0}  # fmt: skip


def start_lifecycle_cluster(tmp: Path, **storage: Any) -> LocalCluster:
    settings = tmp / "broker.yaml"
    settings.write_text(yaml.safe_dump({"storage": {**QUICK, **storage}}))
    return start_local_cluster(tmp, broker_config=str(settings))


def s3_settings(cluster: LocalCluster) -> dict[str, Any]:
    cfg = json.loads(Path(cluster.state["brokers"][0]["config"]).read_text())
    return dict(cfg["s3"])


def s3_objects(cluster: LocalCluster) -> dict[str, int]:
    """Stream-set and stream objects in the bucket (key -> size), listed with the S3 API."""
    s3 = s3_settings(cluster)
    client = boto3.client(
        "s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"], region_name=s3["region"],
    )  # fmt: skip
    out: dict[str, int] = {}
    prefix = s3["prefix"] + "objects/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = int(o["Size"])
    return out


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
