"""Handler discovery: every module of engine/broker/handlers with API_KEY and handle().

No registry to edit: a new API is a new file. A module that fails to import stops
the broker from starting (HandlerImportError names it): a broker that quietly served
a smaller API set would look healthy while clients fail on the missing API.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from typing import Any

from engine.broker import handlers
from engine.protocol import SUPPORTED_APIS, ApiKey
from engine.protocol.messages import ApiVersionsResponse

log = logging.getLogger(__name__)

Handle = Callable[[Any, Any], Awaitable[Any]]
#: Optional `begin(ctx, request)`: does the part that must follow request order, returns the rest.
Begin = Callable[[Any, Any], Awaitable[Awaitable[Any]]]


class DuplicateHandler(RuntimeError):
    pass


class HandlerImportError(RuntimeError):
    """A handler module failed to import; the broker does not start without it."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"handler module {module} failed to import: {type(cause).__name__}: {cause}")
        self.module = module


def discover(package: Any = handlers) -> dict[int, Any]:
    """Handler modules by api key.

    Raises HandlerImportError (chained to the import's exception) when a module fails to
    import, DuplicateHandler when two modules serve one api key.
    """
    found: dict[int, Any] = {}
    owners: dict[int, str] = {}
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as e:
            raise HandlerImportError(name, e) from e
        key = getattr(module, "API_KEY", None)
        handle = getattr(module, "handle", None)
        if key is None or handle is None:
            continue
        if int(key) not in SUPPORTED_APIS:
            log.error("handler module %s serves api key %s, which the codec does not know", name, key)
            continue
        if int(key) in found:
            raise DuplicateHandler(f"api key {int(key)} is handled by both {owners[int(key)]} and {name}")
        found[int(key)] = module
        owners[int(key)] = name
    return found


class Dispatcher:
    def __init__(self) -> None:
        modules = discover()
        self.handlers: dict[int, Handle] = {k: m.handle for k, m in modules.items()}
        self.begins: dict[int, Begin] = {k: m.begin for k, m in modules.items() if callable(getattr(m, "begin", None))}
        missing = sorted(ApiKey(k).name for k in SUPPORTED_APIS if k not in self.handlers)
        if missing:
            log.info("APIs without a handler (not advertised): %s", ", ".join(missing))

    def get(self, api_key: int) -> Handle | None:
        return self.handlers.get(api_key)

    def begin(self, api_key: int) -> Begin | None:
        return self.begins.get(api_key)

    def api_versions(self) -> list[ApiVersionsResponse.ApiVersion]:
        """What ApiVersions advertises: the codec's ranges of the APIs that have a handler."""
        return [
            ApiVersionsResponse.ApiVersion(int(s.key), s.min_version, s.max_version)
            for s in SUPPORTED_APIS.values()
            if int(s.key) in self.handlers
        ]
