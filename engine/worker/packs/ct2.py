# Reading CTranslate2 model files (`model.bin`) into numpy arrays.
#
# Rules of this module:
# - The format is the one CTranslate2's Python converter writes
#   (python/ctranslate2/specs/model_spec.py, `ModelSpec._serialize`), little-endian:
#     u32 binary version | string spec name | u32 spec revision | u32 variable count,
#     then per variable: string name | u8 rank | u32 dim * rank | u8 dtype id |
#     u32 byte count | raw data,
#     then u32 alias count and per alias: string alias | string target name.
#   A string is u16 length (bytes + 1) | UTF-8 bytes | NUL.
#   Dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
# - Binary versions 5 and 6 are read (the two current layouts are identical);
#   anything else, a truncated file or trailing bytes is a PackError, never a guess.
# - Scalars (rank 0) are kept as 0-d arrays: CTranslate2 stores model options
#   (num_heads, pre_norm, activation...) as variables.
# - Quantised weights are dequantised on request (`dequantized`): CTranslate2
#   stores an int8/int16 `<name>` beside a float `<name>_scale` (one scale per
#   output row) and the float value is `<name> / <name>_scale`.
# - Aliases (tied weights, e.g. the decoder projection and the embeddings) resolve
#   to the same array object.
from __future__ import annotations

import struct
from pathlib import Path

import attrs
import numpy as np

from engine.worker.packs.build import PackError

__all__ = ["SUPPORTED_BINARY_VERSIONS", "Ct2Model", "read_ct2_model"]

SUPPORTED_BINARY_VERSIONS = (5, 6)
_DTYPES: tuple[np.dtype, ...] = (
    np.dtype("<f4"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<f2"), np.dtype("<u2"),
)
_BFLOAT16 = 5


@attrs.frozen
class Ct2Model:
    """The spec name, revision and variables of one CTranslate2 model file."""

    spec: str  # e.g. "WhisperSpec"
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]

    def get(self, name: str) -> np.ndarray:
        try:
            return self.variables[name]
        except KeyError:
            raise PackError(f"CTranslate2 {self.spec} model has no variable {name!r}") from None

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(()))

    def dequantized(self, name: str) -> np.ndarray:
        """Variable `name` as float32 (quantised weights divided by their scales)."""
        value = self.get(name)
        if value.dtype.kind == "f":
            return value.astype(np.float32)
        scale = self.variables.get(name + "_scale")
        if scale is None:
            raise PackError(f"CTranslate2 variable {name!r} is {value.dtype} and has no {name}_scale")
        scale = scale.astype(np.float32)
        weights: np.ndarray = value.astype(np.float32) / scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
        return weights


class _Reader:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise PackError(f"{self.path}: truncated CTranslate2 model file at byte {self.offset}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> int:
        return int(struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0])

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        if not raw.endswith(b"\0"):
            raise PackError(f"{self.path}: malformed string before byte {self.offset}")
        return raw[:-1].decode("utf-8")


def _array(raw: memoryview, shape: tuple[int, ...], dtype_id: int, name: str, path: Path) -> np.ndarray:
    if dtype_id >= len(_DTYPES):
        raise PackError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
    dtype = _DTYPES[dtype_id]
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dtype.itemsize:
        raise PackError(f"{path}: variable {name!r} of shape {shape} has {len(raw)} bytes")
    value = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    if dtype_id == _BFLOAT16:  # the high half of a float32
        return (value.astype(np.uint32) << 16).view(np.float32)
    return value.copy()


def read_ct2_model(*parts: Path) -> Ct2Model:
    """Parse a CTranslate2 `model.bin`, or the concatenation of its split parts, in order."""
    if not parts:
        raise PackError("read_ct2_model needs at least one file")
    chunks = []
    for part in parts:
        try:
            chunks.append(Path(part).read_bytes())
        except OSError as exc:
            raise PackError(f"cannot read {part}: {exc}") from exc
    path = Path(parts[0]) if len(parts) == 1 else Path("+".join(str(part) for part in parts))
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    reader = _Reader(memoryview(data), path)
    version = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise PackError(f"{path}: CTranslate2 binary version {version} is not supported "
                        f"(supported: {SUPPORTED_BINARY_VERSIONS})")
    spec = reader.string()
    revision = reader.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        dtype_id = reader.unpack("B")
        raw = reader.take(reader.unpack("I"))
        variables[name] = _array(raw, shape, dtype_id, name, path)
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise PackError(f"{path}: alias {alias!r} names unknown variable {target!r}")
        variables[alias] = variables[target]
    if reader.offset != len(data):
        raise PackError(f"{path}: {len(data) - reader.offset} unexpected bytes after the aliases")
    return Ct2Model(spec, revision, version, variables)
