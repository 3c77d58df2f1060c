"""Handler discovery and the small pure helpers of the broker."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from engine.broker.broker import java_string_hashcode
from engine.broker.config import BrokerConfig, BrokerConfigError
from engine.broker.dispatch import Dispatcher, DuplicateHandler, HandlerImportError, discover
from engine.protocol import SUPPORTED_APIS, ApiKey

MINE = {
    ApiKey.API_VERSIONS, ApiKey.METADATA, ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.LIST_OFFSETS,
    ApiKey.OFFSET_FOR_LEADER_EPOCH, ApiKey.DELETE_RECORDS, ApiKey.CREATE_TOPICS, ApiKey.DELETE_TOPICS,
    ApiKey.CREATE_PARTITIONS, ApiKey.DESCRIBE_CONFIGS, ApiKey.ALTER_CONFIGS, ApiKey.INCREMENTAL_ALTER_CONFIGS,
    ApiKey.DESCRIBE_CLUSTER, ApiKey.INIT_PRODUCER_ID,
}  # fmt: skip


def test_every_broker_api_has_a_handler_and_is_advertised_with_the_codec_range() -> None:
    d = Dispatcher()
    assert set(d.handlers) >= MINE
    advertised = {v.api_key: (v.min_version, v.max_version) for v in d.api_versions()}
    for key in MINE:
        spec = SUPPORTED_APIS[key]
        assert advertised[key] == (spec.min_version, spec.max_version)
    # Only APIs with a handler are advertised.
    assert set(advertised) == set(d.handlers)


def _handler_package(root: Path, name: str, modules: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A package `name` under `root` holding `modules` (module name -> source), importable by discover."""
    pkg_dir = root / name
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    for module, source in modules.items():
        (pkg_dir / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(root))
    return types.SimpleNamespace(__path__=[str(pkg_dir)], __name__=name)


HANDLER_18 = "API_KEY = 18\nasync def handle(ctx, request):\n    return None\n"


def test_duplicate_api_keys_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _handler_package(tmp_path, "dup_handlers", {"a": HANDLER_18, "b": HANDLER_18}, monkeypatch)
    with pytest.raises(DuplicateHandler):
        discover(pkg)
    (tmp_path / "dup_handlers" / "b.py").unlink()
    assert list(discover(pkg)) == [18]


def test_a_handler_that_fails_to_import_stops_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = {"a": HANDLER_18, "broken": "import engine.protocol\nraise RuntimeError('half written')\n"}
    pkg = _handler_package(tmp_path, "broken_handlers", modules, monkeypatch)
    with pytest.raises(HandlerImportError) as e:
        discover(pkg)
    assert e.value.module == "broken_handlers.broken"
    assert "broken_handlers.broken" in str(e.value) and "RuntimeError: half written" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)
    # A syntax error (a half-saved file) is refused the same way.
    (tmp_path / "broken_handlers" / "broken.py").write_text("API_KEY = \n")
    with pytest.raises(HandlerImportError, match="SyntaxError"):
        discover(pkg)
    (tmp_path / "broken_handlers" / "broken.py").unlink()
    assert list(discover(pkg)) == [18]


# Values from the JVM: "polygenelubricants".hashCode() is the famous Integer.MIN_VALUE.
@pytest.mark.parametrize(("s", "h"), [("", 0), ("a", 97), ("hello", 99162322), ("Hello World", -862545276),
                                      ("polygenelubricants", -2147483648)])  # fmt: skip
def test_java_string_hashcode(s: str, h: int) -> None:
    assert java_string_hashcode(s) == h


def test_broker_config_loading(tmp_path: pytest.TempPathFactory) -> None:
    cfg = BrokerConfig.from_dict(
        {"num.partitions": 3, "auto.create.topics.enable": False, "storage": {"wal": {"kind": "s3"}}}
    )
    assert cfg.num_partitions == 3 and not cfg.auto_create_topics_enable and cfg.storage.wal.kind == "s3"
    path = tmp_path / "b.json"  # type: ignore[operator]
    cfg.save(path)
    assert BrokerConfig.load(path) == cfg
    with pytest.raises(BrokerConfigError):
        BrokerConfig.from_dict({"num_partitions": 0})
    with pytest.raises(BrokerConfigError):
        BrokerConfig.from_dict({"no_such_setting": 1})


def test_auto_create_off_and_internal_names_never_reach_the_controller() -> None:
    import asyncio

    from engine.broker.broker import Broker
    from engine.protocol import ErrorCode

    async def go() -> None:
        off = Broker(BrokerConfig(auto_create_topics_enable=False, controller="127.0.0.1:1"))
        assert await off.auto_create_topics(["a"]) == {"a": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
        on = Broker(BrokerConfig(controller="127.0.0.1:1"))
        assert await on.auto_create_topics(["__consumer_offsets"]) == {
            "__consumer_offsets": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        }
        await off.controller.close()
        await on.controller.close()

    asyncio.run(go())
