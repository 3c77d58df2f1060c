"""Loader for Apache Kafka's JSON message schemas (vendored in ``schemas/``).

The schemas are the single source of truth for the wire layout of every
request and response: ``messages.py`` (the typed dataclasses) is generated from
them by ``gen_messages.py`` and ``codegen.py`` compiles per-version encoders and
decoders from them at run time. Nothing here is on a hot path.
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

_COMMENT = re.compile(r"(?m)^\s*//.*$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

PRIMITIVES = frozenset(
    {"bool", "int8", "int16", "uint16", "int32", "uint32", "int64", "float64", "string", "bytes", "records",
     "uuid"}
)


@dataclass(frozen=True, slots=True)
class Versions:
    """An inclusive version range; ``hi`` is None for an open range ("3+")."""

    lo: int
    hi: int | None

    @staticmethod
    def parse(text: str | None) -> Versions:
        if text is None or text == "none":
            return NONE
        text = text.strip()
        if text.endswith("+"):
            return Versions(int(text[:-1]), None)
        if "-" in text:
            lo, hi = text.split("-")
            return Versions(int(lo), int(hi))
        return Versions(int(text), int(text))

    def __contains__(self, version: object) -> bool:
        if not isinstance(version, int) or self.lo < 0:
            return False
        return self.lo <= version and (self.hi is None or version <= self.hi)

    def intersects(self, lo: int, hi: int) -> bool:
        return self.lo >= 0 and self.lo <= hi and (self.hi is None or self.hi >= lo)


NONE = Versions(-1, -1)


def attr_name(f: FieldSpec) -> str:
    """The Python attribute for a field (a keyword gets a trailing underscore)."""
    return f.attr + "_" if keyword.iskeyword(f.attr) else f.attr


def snake(name: str) -> str:
    """Kafka's PascalCase field names to Python attribute names (``ThrottleTimeMs`` -> ``throttle_time_ms``)."""
    return _CAMEL.sub("_", name).lower()


@dataclass(slots=True)
class FieldSpec:
    name: str  # Kafka's name, e.g. "ThrottleTimeMs"
    attr: str  # the Python attribute, e.g. "throttle_time_ms"
    type: str  # element type for arrays ("int32", "string", or a struct name)
    is_array: bool
    versions: Versions
    nullable: Versions
    tagged: Versions
    tag: int | None
    default: Any  # raw "default" from the schema, or None when absent
    struct: StructSpec | None  # for struct and array-of-struct fields

    @property
    def is_struct(self) -> bool:
        return self.struct is not None


@dataclass(slots=True)
class StructSpec:
    name: str
    fields: list[FieldSpec] = field(default_factory=list)


@dataclass(slots=True)
class MessageSpec:
    name: str  # e.g. "ProduceRequest"
    api_key: int
    kind: str  # "request" or "response"
    valid: Versions
    flexible: Versions
    root: StructSpec
    structs: list[StructSpec]  # nested structs, leaves first (definition order for codegen)


def _load_text(name: str) -> str:
    return resources.files("engine.protocol").joinpath("schemas", f"{name}.json").read_text("utf-8")


@cache
def load_message(name: str) -> MessageSpec:
    raw = json.loads(_COMMENT.sub("", _load_text(name)))
    common = {s["name"]: s for s in raw.get("commonStructs", [])}
    structs: dict[str, StructSpec] = {}

    def build_struct(sname: str, raw_fields: list[dict[str, Any]]) -> StructSpec:
        if sname in structs:
            return structs[sname]
        spec = StructSpec(sname)
        for rf in raw_fields:
            spec.fields.append(build_field(rf))
        structs[sname] = spec
        return spec

    def build_field(rf: dict[str, Any]) -> FieldSpec:
        ftype: str = rf["type"]
        is_array = ftype.startswith("[]")
        elem = ftype[2:] if is_array else ftype
        struct = None
        if elem not in PRIMITIVES:
            sub = rf.get("fields")
            if sub is None:
                sub = common[elem]["fields"]
            struct = build_struct(elem, sub)
        return FieldSpec(
            name=rf["name"],
            attr=snake(rf["name"]),
            type=elem,
            is_array=is_array,
            versions=Versions.parse(rf.get("versions")),
            nullable=Versions.parse(rf.get("nullableVersions")),
            tagged=Versions.parse(rf.get("taggedVersions")),
            tag=rf.get("tag"),
            default=rf.get("default"),
            struct=struct,
        )

    root = StructSpec(raw["name"], [build_field(rf) for rf in raw["fields"]])
    return MessageSpec(
        name=raw["name"],
        api_key=int(raw["apiKey"]),
        kind=raw["type"],
        valid=Versions.parse(raw["validVersions"]),
        flexible=Versions.parse(raw.get("flexibleVersions")),
        root=root,
        structs=list(structs.values()),
    )
