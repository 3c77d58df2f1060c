"""The controller's settings: flags of `python -m engine.controller` and `amq controller start`, or a YAML file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ControllerConfigError(ValueError):
    pass


@dataclass
class ControllerConfig:
    #: controller.db (SQLite) and nothing else; with PostgreSQL the directory stays empty.
    dir: str = ""
    #: postgresql://... for the cluster's state (several controllers, failover); empty: SQLite in dir.
    metadata: str = ""
    #: Address the RPC listener binds. Anything but loopback only when the operator says so.
    listen: str = "127.0.0.1"
    port: int = 9093  # 0 = any free port
    #: host:port brokers and the other controllers reach this one at (default: listen and bound port).
    advertise: str = ""
    session_timeout_ms: int = 3000
    lost_grace_ms: int = 1500
    lease_ttl_ms: int = 3000
    auto_balance: bool = True
    balance_interval_ms: int = 5000
    balance_cooldown_s: float = 60.0
    balance_max_moves: int = 32

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ControllerConfig:
        raw = {str(k).replace(".", "_").replace("-", "_"): v for k, v in raw.items()}
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ControllerConfigError(
                f"unknown controller settings: {', '.join(unknown)} (known: {', '.join(known)})"
            )
        for name, value in raw.items():
            want = {"str": str, "int": int, "float": (int, float), "bool": bool}[str(known[name].type)]
            # bool is an int in Python: `port: true` must not pass as port 1.
            if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
                raise ControllerConfigError(f"controller setting {name}: expected {known[name].type}, got {value!r}")
        cfg = cls(**raw)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> dict[str, Any]:
        """The file's settings as a dict (flags are laid over it before from_dict)."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ControllerConfigError(f"{path}: no such file") from None
        except OSError as e:
            raise ControllerConfigError(f"{path}: {e.strerror}") from None
        try:
            data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            first = " ".join(line.strip() for line in str(e).splitlines()) or type(e).__name__
            raise ControllerConfigError(f"{path}: not valid YAML: {first}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ControllerConfigError(f"{path}: expected a mapping of settings")
        return data

    def validate(self) -> None:
        from engine.controller.rpc import parse_addresses
        from engine.postgres import is_postgres_url, redact

        if not 0 <= self.port <= 65535:
            raise ControllerConfigError(f"port {self.port} is not a TCP port")
        if self.metadata and not is_postgres_url(self.metadata):
            raise ControllerConfigError(
                f"metadata must be a postgresql://user:password@host:port/database URL, not {redact(self.metadata)!r}"
            )
        if not self.listen.strip():
            raise ControllerConfigError("listen: an address to bind is needed (127.0.0.1, 0.0.0.0, 10.0.1.5 ...)")
        if self.advertise:
            try:
                (addr,) = parse_addresses(self.advertise)
            except ValueError:
                raise ControllerConfigError(f"advertise {self.advertise!r} is not one host:port") from None
            if addr[0] in WILDCARDS:
                raise ControllerConfigError(f"advertise {self.advertise!r}: brokers cannot connect to {addr[0]}")
        elif self.listen in WILDCARDS:
            raise ControllerConfigError(
                f"listen {self.listen} binds every address: say which one brokers reach with advertise host:port"
            )
        for name in ("session_timeout_ms", "lost_grace_ms", "lease_ttl_ms", "balance_interval_ms"):
            if getattr(self, name) <= 0:
                raise ControllerConfigError(f"{name} must be more than 0, got {getattr(self, name)}")


#: Addresses that bind every interface and that nobody can connect to.
WILDCARDS = frozenset({"0.0.0.0", "::", "[::]", ""})
