"""The generated message classes are current, and the advertised versions fit the clients."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.protocol import SUPPORTED_APIS, ApiKey, codegen, gen_messages


def test_messages_module_is_up_to_date() -> None:
    path = Path(gen_messages.__file__).with_name("messages.py")
    assert path.read_text("utf-8") == gen_messages.render(), "run: python -m engine.protocol.gen_messages"


def test_precompile_everything_quickly() -> None:
    t = time.perf_counter()
    codegen.precompile()
    assert time.perf_counter() - t < 10
    assert codegen.SOURCES[("ProduceRequest:decode", 9)].startswith("def d_")


def test_aiokafka_finds_a_version_of_everything_it_uses() -> None:
    """aiokafka picks the highest version of its own it finds in our range, with no fallback."""
    pytest.importorskip("aiokafka")
    import importlib
    import inspect

    from aiokafka.protocol.api import Request

    used = {ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.LIST_OFFSETS, ApiKey.METADATA, ApiKey.OFFSET_COMMIT,
            ApiKey.OFFSET_FETCH, ApiKey.FIND_COORDINATOR, ApiKey.JOIN_GROUP, ApiKey.HEARTBEAT,
            ApiKey.LEAVE_GROUP, ApiKey.SYNC_GROUP, ApiKey.DESCRIBE_GROUPS, ApiKey.LIST_GROUPS,
            ApiKey.API_VERSIONS, ApiKey.CREATE_TOPICS, ApiKey.DELETE_TOPICS, ApiKey.DELETE_RECORDS,
            ApiKey.INIT_PRODUCER_ID, ApiKey.DESCRIBE_CONFIGS, ApiKey.ALTER_CONFIGS,
            ApiKey.CREATE_PARTITIONS, ApiKey.DELETE_GROUPS}
    seen = set()
    for mod in ("admin", "commit", "coordination", "fetch", "group", "metadata", "offset", "produce",
                "transaction"):
        for _, cls in inspect.getmembers(importlib.import_module(f"aiokafka.protocol.{mod}"), inspect.isclass):
            if issubclass(cls, Request) and cls is not Request and cls.API_KEY in used:
                spec = SUPPORTED_APIS[cls.API_KEY]
                versions = [c.API_VERSION for c in cls._CLASSES]
                assert any(spec.supports(v) for v in versions), (cls.__name__, versions, spec)
                seen.add(cls.API_KEY)
    assert seen == used


def test_kafka_python_infers_broker_2_8() -> None:
    """kafka-python derives a broker version from ApiVersions; its integration tests use it."""
    pytest.importorskip("kafka")
    from kafka.protocol.broker_version_data import infer_broker_version_from_api_versions

    versions = {s.key.value: (s.min_version, s.max_version) for s in SUPPORTED_APIS.values()}
    assert infer_broker_version_from_api_versions(versions) == (2, 8)
