"""Object store client: the only code that talks to S3.

An async facade over boto3: each call runs in a small thread pool, so S3
latency never blocks the event loop, and bounded retries (botocore's standard
mode) turn a dead endpoint into an ObjectStoreError within seconds instead of
a hang. Counters of calls and bytes feed metrics and `amq cost --from-run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from engine.util.histogram import Histogram, now


class ObjectStoreError(RuntimeError):
    """An S3 call failed after its retries."""


class NoSuchKey(ObjectStoreError):
    pass


@dataclass(frozen=True)
class ObjectStoreConfig:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    path_style: bool = True
    max_attempts: int = 3
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0
    max_concurrency: int = 16
    # Objects above this size go up as a multipart upload with parts in parallel.
    multipart_threshold: int = 32 << 20
    multipart_part_size: int = 8 << 20
    # Every key gets this prefix, so several clusters (or tests) can share one bucket.
    prefix: str = ""
    # obstore or boto3: same interface; BENCHMARKS.md has the measurement behind the default.
    client: str = "obstore"


@dataclass
class ObjectStoreStats:
    put: int = 0
    put_bytes: int = 0
    get: int = 0
    get_bytes: int = 0
    list: int = 0
    delete: int = 0
    #: Seconds per successful call by kind (put, get, list, delete); a multipart upload is one put.
    #: Observed on the event loop (engine/util/histogram.py), not under the lock.
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {k: Histogram() for k in ("put", "get", "list", "delete")}, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1, nbytes: int = 0) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)
            if nbytes and name in ("put", "get"):
                setattr(self, f"{name}_bytes", getattr(self, f"{name}_bytes") + nbytes)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "put": self.put,
                "put_bytes": self.put_bytes,
                "get": self.get,
                "get_bytes": self.get_bytes,
                "list": self.list,
                "delete": self.delete,
            }


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    #: Last modified, seconds since the epoch: how old a leftover is, for garbage collection.
    modified: float = 0.0


class ObjectStore(Protocol):
    stats: ObjectStoreStats

    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None: ...

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes: ...

    async def list(self, prefix: str) -> list[ObjectInfo]: ...

    async def delete(self, keys: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


class _HasStats(Protocol):
    stats: ObjectStoreStats


_S = TypeVar("_S", bound=_HasStats)
_P = ParamSpec("_P")
_R = TypeVar("_R")


_Method = Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]


def _timed(kind: str) -> Callable[[_Method[_S, _P, _R]], _Method[_S, _P, _R]]:
    """Observe how long each successful call takes in `stats.latency[kind]` (the metrics endpoint)."""

    def wrap(fn: _Method[_S, _P, _R]) -> _Method[_S, _P, _R]:
        @functools.wraps(fn)
        async def timed(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            started = now()
            result = await fn(self, *args, **kwargs)
            self.stats.latency[kind].observe(now() - started)
            return result

        return timed

    return wrap


class S3ObjectStore:
    def __init__(self, config: ObjectStoreConfig) -> None:
        self.config = config
        self.stats = ObjectStoreStats()
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="s3")
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint,
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            region_name=config.region,
            config=Config(
                s3={"addressing_style": "path" if config.path_style else "auto"},
                retries={"max_attempts": config.max_attempts, "mode": "standard"},
                connect_timeout=config.connect_timeout_s,
                read_timeout=config.read_timeout_s,
                max_pool_connections=config.max_concurrency * 2,
                # SeaweedFS and MinIO accept these; skipping payload checksums saves a pass over the data.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    async def _run(self, op: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise NoSuchKey(f"s3 {op} {key}: no such key") from e
            raise ObjectStoreError(f"s3 {op} {key} failed: {code or e}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"s3 {op} {key} failed: {e}") from e

    @_timed("put")
    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        key = self.config.prefix + key
        size = len(data)
        if size > self.config.multipart_threshold:
            await self._put_multipart(key, data)
        else:
            await self._run("PUT", key, self._client.put_object, Bucket=self.config.bucket, Key=key, Body=bytes(data))
            self.stats.add("put", 1, size)

    async def _put_multipart(self, key: str, data: bytes | bytearray | memoryview) -> None:
        bucket = self.config.bucket
        view = memoryview(data)
        created = await self._run(
            "CreateMultipartUpload", key, self._client.create_multipart_upload, Bucket=bucket, Key=key
        )
        upload_id = created["UploadId"]
        part = self.config.multipart_part_size

        async def upload(number: int, chunk: memoryview) -> dict[str, Any]:
            r = await self._run(
                "UploadPart",
                key,
                self._client.upload_part,
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(chunk),
            )
            self.stats.add("put", 1, len(chunk))
            return {"PartNumber": number, "ETag": r["ETag"]}

        try:
            parts = await asyncio.gather(
                *(upload(i + 1, view[off : off + part]) for i, off in enumerate(range(0, len(view), part)))
            )
            await self._run(
                "CompleteMultipartUpload",
                key,
                self._client.complete_multipart_upload,
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": list(parts)},
            )
            self.stats.add("put", 2)  # create + complete are billed as PUT-class requests
        except BaseException:
            with contextlib.suppress(ObjectStoreError):
                await self._run(
                    "AbortMultipartUpload",
                    key,
                    self._client.abort_multipart_upload,
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                )
            raise

    @_timed("get")
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        key = self.config.prefix + key
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Key": key}
        if start is not None or end is not None:
            first = start or 0
            kwargs["Range"] = f"bytes={first}-{'' if end is None else end - 1}"

        def fetch() -> bytes:
            return bytes(self._client.get_object(**kwargs)["Body"].read())

        body: bytes = await self._run("GET", key, fetch)
        self.stats.add("get", 1, len(body))
        return body

    @_timed("list")
    async def list(self, prefix: str) -> list[ObjectInfo]:
        strip = len(self.config.prefix)
        prefix = self.config.prefix + prefix

        def list_all() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                r = self._client.list_objects_v2(**kwargs)
                self.stats.add("list")
                out.extend(
                    ObjectInfo(o["Key"][strip:], o["Size"], o["LastModified"].timestamp())
                    for o in r.get("Contents", [])
                )
                if not r.get("IsTruncated"):
                    return out
                token = r["NextContinuationToken"]

        result: list[ObjectInfo] = await self._run("LIST", prefix, list_all)
        return result

    @_timed("delete")
    async def delete(self, keys: Sequence[str]) -> None:
        keys = [self.config.prefix + k for k in keys]
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            await self._run(
                "DELETE",
                chunk[0],
                self._client.delete_objects,
                Bucket=self.config.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            self.stats.add("delete")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ObstoreObjectStore:
    """The same interface on obstore (Rust, natively async): no thread hop per call.

    Measured against S3ObjectStore in benchmarks/storage_bench.py; see BENCHMARKS.md.
    """

    def __init__(self, config: ObjectStoreConfig) -> None:
        from datetime import timedelta

        from obstore.store import S3Store

        self.config = config
        self.stats = ObjectStoreStats()
        self._store = S3Store(
            config.bucket,
            endpoint=config.endpoint,
            access_key_id=config.access_key,
            secret_access_key=config.secret_key,
            region=config.region,
            virtual_hosted_style_request=not config.path_style,
            client_options={
                "allow_http": config.endpoint.startswith("http://"),
                "connect_timeout": f"{config.connect_timeout_s}s",
                "timeout": f"{config.read_timeout_s}s",
            },
            retry_config={
                "max_retries": max(0, config.max_attempts - 1),
                "retry_timeout": timedelta(seconds=config.read_timeout_s),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=2),
                    "base": 2,
                },
            },
        )

    async def _call(self, op: str, key: str, coro: Any) -> Any:
        import obstore.exceptions as oe

        try:
            return await coro
        except FileNotFoundError as e:
            raise NoSuchKey(f"s3 {op} {key}: no such key") from e
        except oe.NotFoundError as e:
            raise NoSuchKey(f"s3 {op} {key}: no such key") from e
        except (oe.BaseError, OSError, RuntimeError) as e:
            raise ObjectStoreError(f"s3 {op} {key} failed: {e}") from e

    @_timed("put")
    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        import obstore

        key = self.config.prefix + key
        size = len(data)
        multipart = size > self.config.multipart_threshold
        await self._call(
            "PUT",
            key,
            obstore.put_async(
                self._store,
                key,
                data,
                use_multipart=multipart,
                chunk_size=self.config.multipart_part_size,
                max_concurrency=self.config.max_concurrency,
            ),
        )
        parts = -(-size // self.config.multipart_part_size) + 2 if multipart else 1
        self.stats.add("put", parts, size)

    @_timed("get")
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        import obstore

        key = self.config.prefix + key
        if start is None and end is None:
            result = await self._call("GET", key, obstore.get_async(self._store, key))
            body = bytes(await result.bytes_async())
        else:
            first = start or 0
            if end is None:
                result = await self._call(
                    "GET", key, obstore.get_async(self._store, key, options={"range": {"offset": first}})
                )
                body = bytes(await result.bytes_async())
            else:
                body = bytes(
                    await self._call("GET", key, obstore.get_range_async(self._store, key, start=first, end=end))
                )
        self.stats.add("get", 1, len(body))
        return body

    @_timed("list")
    async def list(self, prefix: str) -> list[ObjectInfo]:
        import obstore

        strip = len(self.config.prefix)
        full = self.config.prefix + prefix
        out: list[ObjectInfo] = []

        async def collect() -> None:
            async for chunk in obstore.list(self._store, full, chunk_size=1000):
                self.stats.add("list")
                out.extend(
                    ObjectInfo(str(m["path"])[strip:], int(m["size"]), m["last_modified"].timestamp()) for m in chunk
                )

        await self._call("LIST", full, collect())
        return out

    @_timed("delete")
    async def delete(self, keys: Sequence[str]) -> None:
        import obstore

        full = [self.config.prefix + k for k in keys]
        for i in range(0, len(full), 1000):
            await self._call("DELETE", full[i], obstore.delete_async(self._store, full[i : i + 1000]))
            self.stats.add("delete")

    async def close(self) -> None:
        return None


def make_object_store(config: ObjectStoreConfig, client: str | None = None) -> ObjectStore:
    client = client or config.client
    if client == "boto3":
        return S3ObjectStore(config)
    if client == "obstore":
        return ObstoreObjectStore(config)
    raise ValueError(f"unknown S3 client {client!r}: use boto3 or obstore")
