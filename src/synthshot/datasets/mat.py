"""MATLAB level-5 MAT-files (the format of Flowers' ``imagelabels.mat``/``setid.mat``, the Stanford
Cars devkit and ImageNet's ``meta.mat``), read and written with the standard library only.

Values come back flattened in MATLAB's column-major order, which is all these files need:

* numeric and logical arrays -> ``list`` of ``int``/``float``;
* char arrays -> ``str`` (one row) or ``list[str]`` (several rows);
* cell arrays -> ``list`` of values;
* struct arrays -> ``list`` of ``dict`` (field -> value).

Reference: MathWorks, "MAT-File Format" (level 5), sections "Data Element Format" and
"miMATRIX". Compressed elements (``miCOMPRESSED``, zlib) are supported; sparse and object
arrays are not (none of the dataset files uses them).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

from synthshot.errors import DataError

# data types (the tag's first word)
MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32 = 1, 2, 3, 4, 5, 6
MI_SINGLE, MI_DOUBLE, MI_INT64, MI_UINT64 = 7, 9, 12, 13
MI_MATRIX, MI_COMPRESSED, MI_UTF8, MI_UTF16, MI_UTF32 = 14, 15, 16, 17, 18
_FORMATS = {
    MI_INT8: "b", MI_UINT8: "B", MI_INT16: "h", MI_UINT16: "H", MI_INT32: "i", MI_UINT32: "I",
    MI_SINGLE: "f", MI_DOUBLE: "d", MI_INT64: "q", MI_UINT64: "Q",
}
# array classes (the low byte of the array flags)
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
MX_DOUBLE, MX_SINGLE = 6, 7
_NUMERIC = set(range(6, 16))


class _Reader:
    def __init__(self, data: bytes, order: str, where: str):
        self.data, self.order, self.where = data, order, where

    def elements(self, start: int = 0, end: int | None = None):
        """Yield (type, payload) for each data element in data[start:end]."""
        pos, end = start, len(self.data) if end is None else end
        while pos + 8 <= end:
            first, second = struct.unpack_from(self.order + "II", self.data, pos)
            if first >> 16:  # small data element: size and type share the first word
                kind, size = first & 0xFFFF, first >> 16
                yield kind, self.data[pos + 4 : pos + 4 + size]
                pos += 8
                continue
            kind, size = first, second
            payload = self.data[pos + 8 : pos + 8 + size]
            if len(payload) < size:
                raise DataError(f"MAT-file {self.where} is truncated: download it again")
            yield kind, payload
            pos += 8 + size
            if kind != MI_COMPRESSED:
                pos += (-size) % 8  # elements are padded to 8 bytes, compressed ones are not

    def numbers(self, kind: int, payload: bytes) -> list:
        fmt = _FORMATS.get(kind)
        if fmt is None:
            raise DataError(f"MAT-file {self.where}: unsupported data type {kind}")
        count = len(payload) // struct.calcsize(fmt)
        return list(struct.unpack_from(f"{self.order}{count}{fmt}", payload))

    def matrix(self, payload: bytes) -> tuple[str, Any]:
        """Parse one miMATRIX element: (name, value)."""
        if not payload:
            return "", []
        sub = _Reader(payload, self.order, self.where)
        parts = list(sub.elements())
        flags = sub.numbers(parts[0][0], parts[0][1])[0]
        klass = flags & 0xFF
        dims = sub.numbers(parts[1][0], parts[1][1])
        name = parts[2][1].decode("ascii", "replace")
        count = 1
        for d in dims:
            count *= d
        if klass in _NUMERIC:
            values = sub.numbers(*parts[3]) if len(parts) > 3 else []
            if flags & 0x0800:
                raise DataError(f"MAT-file {self.where}: complex array {name!r} is not supported")
            return name, [int(v) if klass not in (MX_DOUBLE, MX_SINGLE) else v for v in values]
        if klass == MX_CHAR:
            kind, data = parts[3] if len(parts) > 3 else (MI_UINT16, b"")
            if kind in (MI_UTF8, MI_UINT8, MI_INT8):
                chars = data.decode("utf-8")
            elif kind in (MI_UTF16, MI_UINT16):
                chars = data.decode("utf-16-le" if self.order == "<" else "utf-16-be")
            else:
                chars = "".join(chr(c) for c in sub.numbers(kind, data))
            rows = dims[0] if dims else 1
            if rows <= 1:
                return name, chars
            cols = len(chars) // rows
            return name, ["".join(chars[c * rows + r] for c in range(cols)) for r in range(rows)]
        if klass == MX_CELL:
            return name, [sub.matrix(p)[1] for _, p in parts[3 : 3 + count]]
        if klass == MX_STRUCT:
            width = sub.numbers(*parts[3])[0]
            raw = parts[4][1]
            fields = [raw[i : i + width].split(b"\0", 1)[0].decode("ascii") for i in range(0, len(raw), width)]
            values = [sub.matrix(p)[1] for _, p in parts[5:]]
            return name, [
                {f: values[i * len(fields) + j] for j, f in enumerate(fields)} for i in range(count)
            ]
        raise DataError(f"MAT-file {self.where}: array {name!r} has unsupported class {klass}")


def read_mat(path: str | Path) -> dict[str, Any]:
    """The variables of a level-5 MAT-file; ``DataError`` for anything else (e.g. v7.3/HDF5)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 128 or data[:4] == b"\x89HDF":
        raise DataError(f"{path} is not a level-5 MAT-file (too short, or MATLAB v7.3/HDF5): get the original file")
    indicator = data[126:128]
    if indicator not in (b"IM", b"MI"):
        raise DataError(f"{path} is not a level-5 MAT-file (no endian indicator): get the original file")
    reader = _Reader(data, "<" if indicator == b"IM" else ">", str(path))
    out: dict[str, Any] = {}
    for kind, payload in reader.elements(128):
        if kind == MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error:
                raise DataError(f"MAT-file {path} has a corrupt compressed element: download it again") from None
            inner = _Reader(payload, reader.order, str(path))
            for k, p in inner.elements():
                if k == MI_MATRIX:
                    name, value = inner.matrix(p)
                    out[name] = value
        elif kind == MI_MATRIX:
            name, value = reader.matrix(payload)
            out[name] = value
    return out


# -- writing (small files: test fixtures and re-packaged annotations) ----------------------------


def _element(kind: int, payload: bytes) -> bytes:
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * ((-len(payload)) % 8)


def _matrix(name: str, value: Any) -> bytes:
    def header(klass: int, dims: list[int]) -> bytes:
        return (
            _element(MI_UINT32, struct.pack("<II", klass, 0))
            + _element(MI_INT32, struct.pack(f"<{len(dims)}i", *dims))
            + _element(MI_INT8, name.encode("ascii"))
        )

    if isinstance(value, str):
        body = header(MX_CHAR, [1, len(value)]) + _element(MI_UINT16, value.encode("utf-16-le"))
    elif isinstance(value, (int, float)):
        body = header(MX_DOUBLE, [1, 1]) + _element(MI_DOUBLE, struct.pack("<d", float(value)))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        fields = list(value[0])
        width = max(len(f) for f in fields) + 1
        names = b"".join(f.encode("ascii").ljust(width, b"\0") for f in fields)
        body = header(MX_STRUCT, [1, len(value)]) + _element(MI_INT32, struct.pack("<i", width)) + _element(
            MI_INT8, names
        )
        body += b"".join(_matrix("", item[f]) for item in value for f in fields)
    elif isinstance(value, list) and any(isinstance(v, (str, list)) for v in value):
        body = header(MX_CELL, [1, len(value)]) + b"".join(_matrix("", v) for v in value)
    elif isinstance(value, list):
        body = header(MX_DOUBLE, [1, len(value)]) + _element(
            MI_DOUBLE, struct.pack(f"<{len(value)}d", *map(float, value))
        )
    else:
        raise TypeError(f"cannot write {type(value).__name__} to a MAT-file")
    return _element(MI_MATRIX, body)


def write_mat(path: str | Path, variables: dict[str, Any], compress: bool = False) -> None:
    """Write str / number / list of numbers / list of str (cell) / list of dict (struct) variables."""
    text = b"MATLAB 5.0 MAT-file, written by synthshot".ljust(116, b" ")
    out = bytearray(text + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM")
    for name, value in variables.items():
        element = _matrix(name, value)
        if compress:
            packed = zlib.compress(element)
            out += struct.pack("<II", MI_COMPRESSED, len(packed)) + packed
        else:
            out += element
    Path(path).write_bytes(bytes(out))
