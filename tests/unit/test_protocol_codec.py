"""Round trips of every supported API at every supported version, and kio as an oracle."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.protocol import SUPPORTED_APIS, codegen, messages
from engine.protocol.codec import encode_body
from engine.protocol.errors import ErrorCode
from engine.protocol.schema import FieldSpec, StructSpec, attr_name, load_message

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


_ERROR_CODES = [int(e) for e in ErrorCode]


def _scalar(f: FieldSpec, nullable: bool, kio_safe: bool) -> st.SearchStrategy[Any]:
    t = f.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        if kio_safe:
            # kio maps some fields to enums, datetimes and timedeltas and rejects what
            # does not fit them (unknown error codes, timestamps below -1).
            if f.name.endswith("ErrorCode"):
                base: st.SearchStrategy[Any] = st.sampled_from(_ERROR_CODES)
            else:
                base = st.integers(max(lo, -1), min(hi, 2**41))
        else:
            base = st.integers(lo, hi)
    elif t == "bool":
        base = st.booleans()
    elif t == "float64":
        base = st.floats(allow_nan=False)
    elif t == "string":
        base = st.text(max_size=12)
    elif t in ("bytes", "records"):
        base = st.binary(max_size=40)
    elif t == "uuid":
        base = st.uuids()
    else:  # pragma: no cover
        raise AssertionError(t)
    return st.none() | base if nullable else base


def struct_strategy(
    msg_name: str, struct: StructSpec, cls: type, version: int, flexible: bool, kio_safe: bool
) -> st.SearchStrategy[Any]:
    """Objects of ``cls`` with random values in the fields ``version`` carries, defaults elsewhere."""
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    top = getattr(messages, msg_name)
    for f in struct.fields:
        if version not in f.versions or attr_name(f) not in names:
            continue
        if f.tagged.lo >= 0 and not flexible:
            continue
        nullable = version in f.nullable or f.type == "records"
        if f.struct is not None:
            sub = struct_strategy(msg_name, f.struct, getattr(top, f.struct.name), version, flexible, kio_safe)
            s: st.SearchStrategy[Any] = st.lists(sub, max_size=3) if f.is_array else sub
            if not f.is_array and f.tagged.lo >= 0:
                # Tagged structs are None when absent, and an all-defaults one is not sent.
                empty = getattr(top, f.struct.name)()
                s = st.none() | s.filter(lambda x, empty=empty: x != empty)
        elif f.is_array:
            s = st.lists(_scalar(f, False, kio_safe), max_size=4)
        else:
            s = _scalar(f, nullable, kio_safe)
        if f.is_array and nullable:
            s = st.none() | s
        kwargs[attr_name(f)] = s
    return st.builds(cls, **kwargs)


def message_strategy(name: str, version: int, kio_safe: bool = False) -> st.SearchStrategy[Any]:
    spec = load_message(name)
    return struct_strategy(name, spec.root, getattr(messages, name), version, version in spec.flexible, kio_safe)


CASES = [
    (f"{s.name}{kind}", v)
    for s in SUPPORTED_APIS.values()
    for kind in ("Request", "Response")
    for v in range(s.min_version, s.max_version + 1)
]


def _roundtrip(name: str, version: int, obj: Any) -> bytes:
    data = b"".join(encode_body(obj, version))
    decoded, end = codegen.decoder(name, version)(memoryview(data), 0)
    assert end == len(data)
    assert decoded == obj
    # Canonical: re-encoding what was decoded gives the same bytes.
    assert b"".join(encode_body(decoded, version)) == data
    return data


@pytest.mark.parametrize(("name", "version"), CASES, ids=[f"{n}-v{v}" for n, v in CASES])
def test_default_object_round_trips(name: str, version: int) -> None:
    _roundtrip(name, version, getattr(messages, name)())


@pytest.mark.parametrize(("name", "version"), CASES, ids=[f"{n}-v{v}" for n, v in CASES])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_objects_round_trip(name: str, version: int, data: st.DataObject) -> None:
    obj = data.draw(message_strategy(name, version))
    _roundtrip(name, version, obj)


# -- kio, generated from the same Kafka schemas by other people, as an oracle ------------------

kio_index = pytest.importorskip("kio.index")
kio_serial = pytest.importorskip("kio.serial")


def _kio_entity(name: str, version: int) -> Any | None:
    spec = load_message(name)
    loader = kio_index.load_request_schema if spec.kind == "request" else kio_index.load_response_schema
    try:
        return loader(spec.api_key, version)
    except (kio_index.UnknownEntity, kio_index.UnknownAPIKey):
        return None


KIO_CASES = [(n, v) for n, v in CASES if _kio_entity(n, v) is not None]


@pytest.mark.parametrize(("name", "version"), KIO_CASES, ids=[f"{n}-v{v}" for n, v in KIO_CASES])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kio_reads_and_rewrites_our_bytes(name: str, version: int, data: st.DataObject) -> None:
    """kio parses what we encode, consuming all of it, and encodes it back to the same bytes."""
    obj = data.draw(message_strategy(name, version, kio_safe=True))
    ours = b"".join(encode_body(obj, version))
    entity_cls = _kio_entity(name, version)
    entity, size = kio_serial.entity_reader(entity_cls)(memoryview(ours), 0)
    assert size == len(ours)
    out = io.BytesIO()
    kio_serial.entity_writer(entity_cls)(out, entity)
    assert out.getvalue() == ours
