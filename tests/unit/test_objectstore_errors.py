"""S3 error paths of the object store client (moto: no real server needed to make S3 misbehave)."""

from __future__ import annotations

import asyncio

import boto3
import pytest
from moto import mock_aws

from engine.storage.objects.store import (
    NoSuchKey,
    ObjectStoreConfig,
    ObjectStoreError,
    S3ObjectStore,
    make_object_store,
)


def config(**kw: object) -> ObjectStoreConfig:
    base = {
        "endpoint": "https://s3.us-east-1.amazonaws.com",
        "bucket": "amq-test",
        "access_key": "k",
        "secret_key": "s",
        "client": "boto3",
        "max_attempts": 1,
    }
    base.update(kw)
    return ObjectStoreConfig(**base)  # type: ignore[arg-type]


@mock_aws
def test_missing_key_and_bucket_are_clear_errors() -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="amq-test")

    async def main() -> None:
        store = S3ObjectStore(config())
        with pytest.raises(NoSuchKey, match="no such key"):
            await store.get("nope")
        other = S3ObjectStore(config(bucket="amq-missing"))
        with pytest.raises(ObjectStoreError, match="NoSuchBucket"):
            await other.put("k", b"x")
        await store.close()
        await other.close()

    asyncio.run(main())


@mock_aws
def test_multipart_put_and_ranged_get_and_counters() -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="amq-test")

    async def main() -> None:
        store = S3ObjectStore(config(multipart_threshold=6 << 20, multipart_part_size=5 << 20, prefix="p/"))
        body = bytes(range(256)) * (48 * 1024)  # 12 MiB: three parts
        await store.put("big", body)
        assert await store.get("big", 100, 356) == body[100:356]
        assert [(o.key, o.size) for o in await store.list("")] == [("big", len(body))]
        snap = store.stats.snapshot()
        assert snap["put"] == 3 + 2  # parts + create + complete
        assert snap["put_bytes"] == len(body)
        await store.delete(["big"])
        assert await store.list("") == []
        await store.close()

    asyncio.run(main())


def test_unreachable_endpoint_fails_fast_with_a_clear_error() -> None:
    async def main() -> None:
        for client in ("boto3", "obstore"):
            store = make_object_store(
                config(endpoint="http://127.0.0.1:9", client=client, connect_timeout_s=0.5), client
            )
            with pytest.raises(ObjectStoreError, match="PUT"):
                await asyncio.wait_for(store.put("k", b"x"), 20)
            await store.close()

    asyncio.run(main())


def test_unknown_client_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown S3 client"):
        make_object_store(config(), "curl")
