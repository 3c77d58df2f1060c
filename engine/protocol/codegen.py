"""Compile per-version decoders and encoders from the Kafka JSON schemas.

For each (message, version) this writes straight-line Python source, one function per
struct, and ``exec``s it once, the first time the version is used. This is what
Kafka's own Java generator does, and it is what makes a pure-Python codec fast:
no per-field dispatch, no reflection, runs of fixed-width fields read and written by
one precompiled ``struct.Struct``, records kept as memoryviews.

Decoder: ``decode(buf: memoryview, pos: int) -> (message, pos)``.
Encoder: ``encode(message, out: bytearray, parts: list) -> None``; it appends to
``out``, and when it meets a records payload of ``ZERO_COPY_MIN`` bytes or more it
moves ``out``'s bytes so far into ``parts`` and appends the payload itself, so the
caller can hand the list to ``writelines``/``sendmsg`` without copying records.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

from engine.protocol import _wire, messages
from engine.protocol.schema import FieldSpec, MessageSpec, StructSpec, attr_name, load_message

ZERO_COPY_MIN = 4096

Decoder = Callable[[memoryview, int], tuple[Any, int]]
Encoder = Callable[[Any, bytearray, list[_wire.Buffer]], None]

_FIXED = {"bool": "?", "int8": "b", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
          "float64": "d"}
_SIZES = {"?": 1, "b": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "d": 8}

# Source literals for null and empty lengths, by flexible (compact) or not.
_NULL_STRING = {True: repr(b"\x00"), False: repr(b"\xff\xff")}
_NULL_BYTES = {True: repr(b"\x00"), False: repr(b"\xff\xff\xff\xff")}
_EMPTY_BYTES = {True: repr(b"\x01"), False: repr(bytes(4))}

#: Generated source by (message name, version), for debugging and tests.
SOURCES: dict[tuple[str, int], str] = {}


class _Gen:
    """Source builder for one (message, version)."""

    def __init__(self, msg: MessageSpec, version: int) -> None:
        self.msg = msg
        self.v = version
        self.flex = version in msg.flexible
        self.ns: dict[str, Any] = {
            "_w": _wire,
            "_ruv": _wire.read_uvarint,
            "_skip_tags": _wire.skip_tagged_fields,
            "_uv": _wire.uvarint,
            "_UV1": _wire.UVARINT_1,
            "_I16": _wire.INT16,
            "_I32": _wire.INT32,
            "_ZC": ZERO_COPY_MIN,
            "_DecodeError": _wire.DecodeError,
            "_unpack": struct.unpack_from,
            "_pack": struct.pack,
            "_UUID": _wire.ZERO_UUID.__class__,
        }
        self.lines: list[str] = []
        self.top = getattr(messages, msg.name)
        self._n = 0

    # -- helpers -------------------------------------------------------------------

    def const(self, value: Any, hint: str = "k") -> str:
        self._n += 1
        name = f"_{hint}{self._n}"
        self.ns[name] = value
        return name

    def cls_for(self, struct: StructSpec) -> type:
        return self.top if struct is self.msg.root else getattr(self.top, struct.name)

    def fields_in(self, struct: StructSpec) -> list[FieldSpec]:
        return [f for f in struct.fields if self.v in f.versions]

    def is_tagged(self, f: FieldSpec) -> bool:
        return self.flex and self.v in f.tagged

    def nullable(self, f: FieldSpec) -> bool:
        return self.v in f.nullable or (f.type == "records" and not f.is_array)

    def default_value(self, f: FieldSpec, cls: type) -> Any:
        fld = {x.name: x for x in dataclasses.fields(cls)}[attr_name(f)]
        if fld.default is not dataclasses.MISSING:
            return fld.default
        assert fld.default_factory is not dataclasses.MISSING
        return fld.default_factory()

    def default_expr(self, f: FieldSpec, cls: type) -> str:
        """An expression giving a fresh default (lists and structs must not be shared)."""
        fld = {x.name: x for x in dataclasses.fields(cls)}[attr_name(f)]
        if fld.default is not dataclasses.MISSING:
            d = fld.default
            if d is None or isinstance(d, bool | int | float):
                return repr(d)
            return self.const(d, "d")
        if f.is_array:
            return "[]"
        assert f.struct is not None
        return self.const(self.cls_for(f.struct), "C") + "()"

    # -- decoders ------------------------------------------------------------------

    def gen_decoders(self) -> str:
        for s in [*self.msg.structs, self.msg.root]:
            if self.struct_used(s):
                self.gen_decoder(s)
        return "\n".join(self.lines)

    def struct_used(self, s: StructSpec) -> bool:
        if s is self.msg.root:
            return True
        return hasattr(self.top, s.name) and self._reachable(s)

    def _reachable(self, target: StructSpec) -> bool:
        def walk(s: StructSpec) -> bool:
            return any(
                f.struct is not None and (f.struct is target or walk(f.struct)) for f in self.fields_in(s)
            )

        return walk(self.msg.root)

    def gen_decoder(self, s: StructSpec) -> None:
        L = self.lines
        L.append(f"def d_{s.name}(b, p):")
        L.append("    lb = len(b)")
        ctor = self.struct_body(s, "    ", "v_")
        L.append(f"    return {ctor}, p")
        L.append("")

    def is_leaf(self, s: StructSpec) -> bool:
        return not any(f.struct is not None for f in self.fields_in(s))

    def struct_body(self, s: StructSpec, ind: str, prefix: str) -> str:
        """Emit the reads of ``s``'s fields into ``{prefix}{attr}`` locals; return the
        constructor call. Used for struct functions and, for leaf structs, inline in the
        parent's array loop (a call and a tuple less per partition)."""
        cls = self.cls_for(s)
        L = self.lines
        present = self.fields_in(s)
        plain = [f for f in present if not self.is_tagged(f)]
        tagged = [f for f in present if self.is_tagged(f)]
        i = 0
        while i < len(plain):
            f = plain[i]
            run = []
            while i < len(plain) and self.fixed(plain[i]):
                run.append(plain[i])
                i += 1
            if run:
                fmt = ">" + "".join(_FIXED[x.type] for x in run)
                st = self.const(struct.Struct(fmt), "S")
                names = ", ".join(f"{prefix}{x.attr}" for x in run)
                L.append(f"{ind}{names}{',' if len(run) == 1 else ''} = {st}.unpack_from(b, p)")
                L.append(f"{ind}p += {struct.calcsize(fmt)}")
                continue
            self.decode_field(f, ind, f"{prefix}{f.attr}")
            i += 1
        if self.flex:
            if not tagged:
                # Almost always an empty section: one byte, no call.
                L.append(f"{ind}if b[p]:")
                L.append(f"{ind}    p = _skip_tags(b, p)")
                L.append(f"{ind}else:")
                L.append(f"{ind}    p += 1")
            else:
                for f in tagged:
                    L.append(f"{ind}{prefix}{f.attr} = {self.default_expr(f, cls)}")
                L.append(f"{ind}nt, p = _ruv(b, p)")
                L.append(f"{ind}for _ in range(nt):")
                L.append(f"{ind}    tag, p = _ruv(b, p)")
                L.append(f"{ind}    sz, p = _ruv(b, p)")
                L.append(f"{ind}    end = p + sz")
                L.append(f"{ind}    if end > lb:")
                L.append(f"{ind}        raise _DecodeError('tagged field runs past the end')")
                for f in tagged:
                    L.append(f"{ind}    if tag == {f.tag}:")
                    L.append(f"{ind}        q = p")
                    self.decode_field(f, ind + "        ", f"{prefix}{f.attr}", pos_var="q")
                    L.append(f"{ind}        if q != end:")
                    L.append(f"{ind}            raise _DecodeError('tagged field {f.tag} has the wrong size')")
                L.append(f"{ind}    p = end")
        args = []
        present_attrs = {f.attr for f in present}
        fields_by_attr = {attr_name(f): f for f in s.fields}
        for fld in dataclasses.fields(cls):
            spec = fields_by_attr[fld.name]
            args.append(f"{prefix}{spec.attr}" if spec.attr in present_attrs else self.default_expr(spec, cls))
        c = self.const(cls, "C")
        return f"{c}({', '.join(args)})"

    def fixed(self, f: FieldSpec) -> bool:
        return not f.is_array and f.type in _FIXED and not self.is_tagged(f)

    def read_len(self, ind: str, P: str, kind: str) -> None:
        """Emit code leaving a length in ``n`` and ``P`` after it.

        kind "array"/"bytes": int32 (legacy) or compact (uvarint n+1), -1 for null.
        kind "string": int16 (legacy) or compact. Compact lengths take the one-byte path
        inline; longer varints call out.
        """
        L = self.lines
        if self.flex:
            # One- and two-byte varints inline (names, counts, records up to 16 KiB).
            L.append(f"{ind}n = b[{P}]")
            L.append(f"{ind}if n < 128:")
            L.append(f"{ind}    {P} += 1")
            L.append(f"{ind}elif b[{P} + 1] < 128:")
            L.append(f"{ind}    n = (n & 127) | (b[{P} + 1] << 7)")
            L.append(f"{ind}    {P} += 2")
            L.append(f"{ind}else:")
            L.append(f"{ind}    n, {P} = _ruv(b, {P})")
            L.append(f"{ind}n -= 1")
        else:
            st = "_I16" if kind == "string" else "_I32"
            L.append(f"{ind}n, = {st}.unpack_from(b, {P})")
            L.append(f"{ind}{P} += {2 if kind == 'string' else 4}")

    def decode_field(self, f: FieldSpec, ind: str, var: str, pos_var: str = "p") -> None:
        L = self.lines
        P = pos_var
        nullable = self.nullable(f)
        if f.is_array:
            self.read_len(ind, P, "array")
            L.append(f"{ind}if n < 0:")
            if nullable:
                L.append(f"{ind}    {var} = None")
            else:
                L.append(f"{ind}    raise _DecodeError('null array in non-nullable field {f.name}')")
            # A forged count must not make us loop (or allocate) beyond what the frame holds.
            L.append(f"{ind}elif n > lb - {P}:")
            L.append(f"{ind}    raise _DecodeError(f'array of {{n}} elements cannot fit')")
            L.append(f"{ind}else:")
            ap = f"ap_{var}"
            if f.struct is not None and P == "p" and self.is_leaf(f.struct):
                L.append(f"{ind}    {var} = []")
                L.append(f"{ind}    {ap} = {var}.append")
                L.append(f"{ind}    for _ in range(n):")
                # Leaves never inline further, so "e_" cannot meet another inlined level.
                ctor = self.struct_body(f.struct, ind + "        ", "e_")
                L.append(f"{ind}        {ap}({ctor})")
            elif f.struct is not None:
                L.append(f"{ind}    {var} = []")
                L.append(f"{ind}    {ap} = {var}.append")
                L.append(f"{ind}    for _ in range(n):")
                L.append(f"{ind}        o, {P} = d_{f.type}(b, {P})")
                L.append(f"{ind}        {ap}(o)")
            elif f.type in _FIXED:
                code = _FIXED[f.type]
                L.append(f"{ind}    {var} = list(_unpack(f'>{{n}}{code}', b, {P}))")
                L.append(f"{ind}    {P} += n * {_SIZES[code]}")
            else:
                reader = self.reader(f, element=True)
                L.append(f"{ind}    {var} = []")
                L.append(f"{ind}    {ap} = {var}.append")
                L.append(f"{ind}    for _ in range(n):")
                L.append(f"{ind}        o, {P} = {reader}(b, {P})")
                L.append(f"{ind}        {ap}(o)")
            return
        if f.struct is not None:
            L.append(f"{ind}{var}, {P} = d_{f.type}(b, {P})")
            return
        if f.type in _FIXED:
            st = self.const(struct.Struct(">" + _FIXED[f.type]), "S")
            L.append(f"{ind}{var}, = {st}.unpack_from(b, {P})")
            L.append(f"{ind}{P} += {_SIZES[_FIXED[f.type]]}")
            return
        if f.type == "uuid":
            L.append(f"{ind}{var}, {P} = {self.reader(f)}(b, {P})")
            return
        # string, bytes, records: length, then a slice.
        self.read_len(ind, P, "string" if f.type == "string" else "bytes")
        L.append(f"{ind}if n < 0:")
        if nullable:
            L.append(f"{ind}    {var} = None")
        else:
            L.append(f"{ind}    raise _DecodeError('null in non-nullable field {f.name}')")
        L.append(f"{ind}else:")
        L.append(f"{ind}    z = {P} + n")
        L.append(f"{ind}    if z > lb:")
        L.append(f"{ind}        raise _DecodeError('field {f.name} runs past the end')")
        if f.type == "string":
            L.append(f"{ind}    {var} = str(b[{P}:z], 'utf-8')")
        elif f.type == "bytes":
            L.append(f"{ind}    {var} = bytes(b[{P}:z])")
        else:
            # Records stay a view into the frame: no copy on the produce path.
            L.append(f"{ind}    {var} = b[{P}:z]")
        L.append(f"{ind}    {P} = z")

    def reader(self, f: FieldSpec, element: bool = False) -> str:
        nullable = self.nullable(f) and not element
        t = f.type
        if t == "string":
            fn = {
                (False, False): _wire.read_string,
                (False, True): _wire.read_nullable_string,
                (True, False): _wire.read_compact_string,
                (True, True): _wire.read_compact_nullable_string,
            }[(self.flex, nullable)]
        elif t == "uuid":
            fn = _wire.read_uuid
        else:
            raise ValueError(f"no reader for {t}")
        return self.const(fn, "r")

    # -- encoders ------------------------------------------------------------------

    def gen_encoders(self) -> str:
        for s in [*self.msg.structs, self.msg.root]:
            if self.struct_used(s):
                self.gen_encoder(s)
        return "\n".join(self.lines)

    def gen_encoder(self, s: StructSpec) -> None:
        cls = self.cls_for(s)
        L = self.lines
        L.append(f"def e_{s.name}(o, w, parts):")
        present = self.fields_in(s)
        plain = [f for f in present if not self.is_tagged(f)]
        tagged = sorted((f for f in present if self.is_tagged(f)), key=lambda f: f.tag or 0)
        i = 0
        wrote = False
        while i < len(plain):
            run = []
            while i < len(plain) and self.fixed(plain[i]):
                run.append(plain[i])
                i += 1
            if run:
                fmt = ">" + "".join(_FIXED[x.type] for x in run)
                st = self.const(struct.Struct(fmt), "S")
                vals = ", ".join(f"o.{attr_name(x)}" for x in run)
                L.append(f"    w += {st}.pack({vals})")
                wrote = True
                continue
            f = plain[i]
            self.encode_field(f, "    ", f"o.{attr_name(f)}", "w")
            wrote = True
            i += 1
        if self.flex:
            if not tagged:
                L.append("    w.append(0)")
            else:
                L.append("    tg = []")
                for f in tagged:
                    dflt = self.default_value(f, cls)
                    L.append(f"    x = o.{attr_name(f)}")
                    if f.is_array:
                        L.append("    if x:")
                    elif dflt is None and f.struct is not None:
                        # Present, and (as Kafka requires) not just the struct's defaults.
                        empty = self.const(self.cls_for(f.struct)(), "d")
                        L.append(f"    if x is not None and x != {empty}:")
                    elif dflt is None:
                        L.append("    if x is not None:")
                    else:
                        L.append(f"    if x != {self.const(dflt, 'd')}:")
                    L.append("        tb = bytearray()")
                    self.encode_field(f, "        ", "x", "tb", in_tag=True)
                    L.append(f"        tg.append(({f.tag}, tb))")
                L.append("    w += _uv(len(tg))")
                L.append("    for tag, tb in tg:")
                L.append("        w += _uv(tag)")
                L.append("        w += _uv(len(tb))")
                L.append("        w += tb")
            wrote = True
        if not wrote:
            L.append("    pass")
        L.append("")

    def encode_field(self, f: FieldSpec, ind: str, expr: str, w: str, in_tag: bool = False) -> None:
        L = self.lines
        flex = self.flex
        nullable = self.nullable(f)
        parts = "_w_noparts" if in_tag else "parts"
        if in_tag:
            self.ns["_w_noparts"] = _NoParts()
        null_len = "b'\\x00'" if flex else ("b'\\xff\\xff\\xff\\xff'" if (f.is_array or f.type in ("bytes", "records"))
                                             else "b'\\xff\\xff'")
        if f.is_array:
            L.append(f"{ind}a = {expr}")
            L.append(f"{ind}if a is None:")
            if nullable:
                L.append(f"{ind}    {w} += {null_len}")
            else:
                L.append(f"{ind}    {w} += {'b' + repr(chr(1)) if flex else repr(bytes(4))}")
            L.append(f"{ind}else:")
            if flex:
                L.append(f"{ind}    n = len(a) + 1")
                L.append(f"{ind}    {w} += _UV1[n] if n < 128 else _uv(n)")
            else:
                L.append(f"{ind}    {w} += _I32.pack(len(a))")
            if f.struct is not None:
                L.append(f"{ind}    for x in a:")
                L.append(f"{ind}        e_{f.type}(x, {w}, {parts})")
            elif f.type in _FIXED:
                code = _FIXED[f.type]
                L.append(f"{ind}    {w} += _pack(f'>{{len(a)}}{code}', *a)")
            else:
                L.append(f"{ind}    for x in a:")
                self.encode_scalar(f, ind + "        ", "x", w, parts, element=True)
            return
        if f.struct is not None:
            L.append(f"{ind}e_{f.type}({expr}, {w}, {parts})")
            return
        self.encode_scalar(f, ind, expr, w, parts, element=False)

    def encode_scalar(self, f: FieldSpec, ind: str, expr: str, w: str, parts: str, element: bool) -> None:
        L = self.lines
        flex = self.flex
        nullable = self.nullable(f) and not element
        t = f.type
        if t in _FIXED:
            st = self.const(struct.Struct(">" + _FIXED[t]), "S")
            L.append(f"{ind}{w} += {st}.pack({expr})")
            return
        if t == "uuid":
            L.append(f"{ind}{w} += {expr}.bytes")
            return
        if t == "string":
            L.append(f"{ind}s = {expr}")
            if nullable:
                L.append(f"{ind}if s is None:")
                L.append(f"{ind}    {w} += {_NULL_STRING[flex]}")
                L.append(f"{ind}else:")
                ind2 = ind + "    "
            else:
                # Lenient on purpose: None where this version cannot say null goes out as "".
                L.append(f"{ind}if s is None:")
                L.append(f"{ind}    s = ''")
                ind2 = ind
            L.append(f"{ind2}s = s.encode()")
            if flex:
                L.append(f"{ind2}n = len(s) + 1")
                L.append(f"{ind2}{w} += _UV1[n] if n < 128 else _uv(n)")
            else:
                L.append(f"{ind2}{w} += _I16.pack(len(s))")
            L.append(f"{ind2}{w} += s")
            return
        if t in ("bytes", "records"):
            L.append(f"{ind}s = {expr}")
            L.append(f"{ind}if s is None:")
            if nullable:
                L.append(f"{ind}    {w} += {_NULL_BYTES[flex]}")
            else:
                L.append(f"{ind}    {w} += {_EMPTY_BYTES[flex]}")
            if t == "bytes":
                L.append(f"{ind}else:")
                self._write_len(ind + "    ", "len(s)", w)
                L.append(f"{ind}    {w} += s")
                return
            # records: a buffer or a list of buffers; big ones go to parts uncopied.
            L.append(f"{ind}elif s.__class__ is list:")
            L.append(f"{ind}    n = 0")
            L.append(f"{ind}    for c in s:")
            L.append(f"{ind}        n += len(c)")
            self._write_len(ind + "    ", "n", w)
            L.append(f"{ind}    if n >= _ZC:")
            L.append(f"{ind}        {parts}.append(bytes({w}))")
            L.append(f"{ind}        {w}.clear()")
            L.append(f"{ind}        {parts}.extend(s)")
            L.append(f"{ind}    else:")
            L.append(f"{ind}        for c in s:")
            L.append(f"{ind}            {w} += c")
            L.append(f"{ind}else:")
            L.append(f"{ind}    n = len(s)")
            self._write_len(ind + "    ", "n", w)
            L.append(f"{ind}    if n >= _ZC:")
            L.append(f"{ind}        {parts}.append(bytes({w}))")
            L.append(f"{ind}        {w}.clear()")
            L.append(f"{ind}        {parts}.append(s)")
            L.append(f"{ind}    else:")
            L.append(f"{ind}        {w} += s")
            return
        raise ValueError(f"no encoder for {t}")

    def _write_len(self, ind: str, n: str, w: str) -> None:
        if self.flex:
            self.lines.append(f"{ind}{w} += _uv({n} + 1)")
        else:
            self.lines.append(f"{ind}{w} += _I32.pack({n})")


class _NoParts(list[_wire.Buffer]):
    """``parts`` inside a tagged field: payloads there are small and must stay inline."""

    def append(self, item: _wire.Buffer) -> None:
        raise AssertionError("records inside a tagged field cannot be zero-copy")


def _compile(gen: _Gen, source: str, entry: str, key: tuple[str, int]) -> Any:
    SOURCES[key] = source
    code = compile(source, f"<amq-codec {key[0]} v{key[1]}>", "exec")
    exec(code, gen.ns)
    return gen.ns[entry]


@cache
def decoder(message: str, version: int) -> Decoder:
    """Decoder for ``message`` (e.g. "ProduceRequest") at ``version``."""
    gen = _Gen(load_message(message), version)
    src = gen.gen_decoders()
    fn: Decoder = _compile(gen, src, f"d_{message}", (message + ":decode", version))
    return fn


@cache
def encoder(message: str, version: int) -> Encoder:
    """Encoder for ``message`` (e.g. "FetchResponse") at ``version``."""
    gen = _Gen(load_message(message), version)
    src = gen.gen_encoders()
    fn: Encoder = _compile(gen, src, f"e_{message}", (message + ":encode", version))
    return fn


def precompile() -> None:
    """Compile request decoders and response encoders for every advertised version now,
    so the first client to use one does not wait for it (about 0.3 s in all)."""
    from engine.protocol.apis import SUPPORTED_APIS

    for spec in SUPPORTED_APIS.values():
        for v in range(spec.min_version, spec.max_version + 1):
            decoder(f"{spec.name}Request", v)
            encoder(f"{spec.name}Response", v)
