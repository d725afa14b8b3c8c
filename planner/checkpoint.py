"""Read a checkpoint's tensor headers (safetensors, sharded safetensors, GGUF) without loading data.

Only ``struct``, ``json`` and ``os`` are used: importing this module loads no torch, numpy,
safetensors or gguf. Every parser reads the header alone (GGUF is read in 64 KiB chunks, so at most
64 KiB past the header's end may be read; tensor data is never parsed) and checks every claimed
length and count against the file's size (``os.stat``) before using it, so hostile, truncated or
huge inputs end in :class:`planner.errors.InputError` with a one-line message naming the file, never
in a hang, a large allocation or a traceback.

Public API:

- :func:`read_checkpoint` (path) -> :class:`Checkpoint`: a ``.gguf`` file (or any file that starts
  with the GGUF magic), a ``.safetensors`` file, a ``model.safetensors.index.json`` file, or a folder
  holding an index (sharded), ``model.safetensors``, several ``*.safetensors`` (treated as shards,
  without an index), or a single ``.gguf``.
- :func:`read_safetensors_header` (path) -> (list of :class:`CheckpointTensor`, metadata dict).
- :func:`read_gguf` (path) -> :class:`Checkpoint`.
- :func:`gguf_scalar` (metadata, key, default) -> a scalar GGUF metadata value.

GGUF metadata representation (``Checkpoint.metadata`` for ``format == "gguf"``): scalars become
``int`` / ``float`` / ``bool`` / ``str`` (FLOAT32 values as the shortest decimal that rounds to the
same float32, so an epsilon reads 1e-05; strings that are not valid UTF-8 are decoded with
replacement characters); arrays of at most :data:`GGUF_ARRAY_KEEP` elements become Python lists
(nested arrays nest); longer arrays (e.g. ``tokenizer.ggml.tokens``) are summarised as
``{"type": "array", "elem_type": "STRING", "len": n}`` -- see :func:`gguf_array_len`. The header
fields themselves are stored as ``"GGUF.version"``, ``"GGUF.tensor_count"``, ``"GGUF.kv_count"``.

Sharded safetensors metadata: the index's own ``"metadata"`` entries (``total_size`` among them,
kept as given; it is informational and never checked -- see :attr:`Checkpoint.declared_total_size`)
merged with each shard's ``__metadata__`` (first shard wins on a conflict).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from planner.errors import InputError
from planner.units import as_int

__all__ = [
    "Checkpoint",
    "CheckpointTensor",
    "GGML_TYPES",
    "GGUF_ARRAY_KEEP",
    "SAFETENSORS_DTYPE_BITS",
    "gguf_array_len",
    "gguf_scalar",
    "read_checkpoint",
    "read_gguf",
    "read_safetensors_header",
]


# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor as its file's header describes it."""

    name: str
    """Tensor name exactly as stored in the file."""
    shape: tuple[int, ...]
    """PyTorch-style shape, outermost first (for GGUF: the file's ``ne`` dims reversed)."""
    dtype: str
    """Safetensors dtype string ("F16", "BF16", "I8", …) or GGML type name ("F32", "Q4_K", …)."""
    nbytes: int
    """Exact bytes of the tensor's data in the file."""
    file: str
    """Basename of the file holding the tensor (differs between shards)."""

    @property
    def numel(self) -> int:
        """Number of elements (1 for a 0-d tensor)."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's tensor inventory, read from headers only."""

    path: str
    """The path it was read from (file or folder), as given."""
    format: str
    """"safetensors", "safetensors-sharded" or "gguf"."""
    tensors: tuple[CheckpointTensor, ...]
    """Every tensor, in file order (shards in index/file-name order)."""
    metadata: dict
    """Safetensors ``__metadata__`` (plus index metadata when sharded) or GGUF key/value metadata."""
    config: dict | None
    """The parsed ``config.json`` beside a safetensors file or folder; None if absent (or GGUF)."""

    @property
    def params(self) -> int:
        """Total number of elements over all tensors."""
        return sum(t.numel for t in self.tensors)

    @property
    def bytes(self) -> int:
        """Total bytes of tensor data over all tensors."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def declared_total_size(self) -> int | None:
        """A sharded index's ``metadata.total_size`` as an int, if present and numeric (informational)."""
        v = self.metadata.get("total_size") if self.format == "safetensors-sharded" else None
        if isinstance(v, str) and v.strip().isdigit():
            return int(v.strip())
        return as_int(v)

    def tensor(self, name: str) -> CheckpointTensor:
        """The tensor called ``name``; KeyError if absent."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Tables

#: safetensors dtype -> bits per element (sub-byte types included, as the safetensors crate knows them).
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: GGML type id -> (name, elements per block, bytes per block). Ids 4, 5 (Q4_2/Q4_3) and 31-33,
#: 36-38 (repacked Q4_0_4_4 …, IQ4_NL_4_4 …) were removed from ggml and are refused as unknown.
#: Q8_1 is 36 bytes per block in current ggml (ggml-common.h: two fp16 + 32 int8); gguf-py's
#: table still says 40. No model file stores Q8_1 (it is a matmul scratch type).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

# GGUF metadata value types.
_GGUF_UINT8, _GGUF_INT8, _GGUF_UINT16, _GGUF_INT16 = 0, 1, 2, 3
_GGUF_UINT32, _GGUF_INT32, _GGUF_FLOAT32, _GGUF_BOOL = 4, 5, 6, 7
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT64, _GGUF_INT64, _GGUF_FLOAT64 = 8, 9, 10, 11, 12

_GGUF_VALUE_NAMES = {
    0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32",
    7: "BOOL", 8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64",
}
# Fixed-size scalar types: struct format.
_GGUF_SCALAR_FMT = {
    _GGUF_UINT8: "<B", _GGUF_INT8: "<b", _GGUF_UINT16: "<H", _GGUF_INT16: "<h",
    _GGUF_UINT32: "<I", _GGUF_INT32: "<i", _GGUF_FLOAT32: "<f", _GGUF_BOOL: "<B",
    _GGUF_UINT64: "<Q", _GGUF_INT64: "<q", _GGUF_FLOAT64: "<d",
}
# Smallest encoding of one value of each type (for count-vs-size checks).
_GGUF_MIN_SIZE = {t: struct.calcsize(f) for t, f in _GGUF_SCALAR_FMT.items()}
_GGUF_MIN_SIZE[_GGUF_STRING] = 8
_GGUF_MIN_SIZE[_GGUF_ARRAY] = 12

GGUF_MAGIC = b"GGUF"
#: Arrays longer than this are summarised in metadata as {"type": "array", "elem_type", "len"}.
GGUF_ARRAY_KEEP = 1024
_GGUF_MAX_STRING = 64 << 20
_GGUF_MAX_ARRAY_DEPTH = 4
_GGUF_MAX_DIMS = 8
_GGUF_DEFAULT_ALIGNMENT = 32
_GGUF_CHUNK = 64 << 10
_GGUF_MIN_KV = 8 + 1 + 4 + 1  # key length, >= 1 key byte, value type, >= 1 value byte
_GGUF_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, >= 1 dim, type, offset
_MAX_NUMEL = 1 << 62
MAX_TENSORS = 1 << 20
"""Most tensors a checkpoint (one file, or all shards of one together) may list: 1,048,576, over
ten times the largest real checkpoints (DeepSeek-V3 with its fp8 scales lists 91,991). Checked
before any per-tensor object is made, so a hostile header costs no more than this."""
MAX_GGUF_KV = 1 << 16
"""Most metadata key/value pairs a GGUF header may claim (real files: a few dozen)."""

_ST_MAX_HEADER = 100 << 20
_ST_INDEX = "model.safetensors.index.json"


def _fail(path: str, what: str) -> InputError:
    """An InputError whose one-line message names the file."""
    return InputError(f"{path}: {what}".replace("\n", " ").replace("\r", " "))


def _short(s: str, n: int = 80) -> str:
    """repr() of a possibly hostile string, cut to n characters."""
    r = repr(s)
    return r if len(r) <= n else r[: n - 3] + "..."


def _stat_file(path: str) -> int:
    """The size of a readable regular file; a FIFO, device, folder or loop fails in one line."""
    from planner.paths import check_input

    return check_input(path, "file", "checkpoint file").st_size


def _open(path: str):
    from planner.paths import open_regular

    return open_regular(path, "checkpoint file")


# --------------------------------------------------------------------------------------------
# safetensors


def _no_dup_pairs(path: str):
    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise _fail(path, f"safetensors header has duplicate key {_short(k)}")
            d[k] = v
        return d

    return hook


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors_header(path: str) -> tuple[list[CheckpointTensor], dict]:
    """Parse one .safetensors file's header: (tensors in data-offset order, ``__metadata__`` dict).

    Validates the header length against the file size and the 100 MiB cap, the JSON, every entry's
    dtype/shape/offsets, the byte count implied by shape and dtype, bounds and overlaps.
    """
    path = os.fspath(path)
    size = _stat_file(path)
    if size < 8:
        raise _fail(path, f"file is {size} bytes, too short for a safetensors header (needs 8)")
    with _open(path) as f:
        head = f.read(8)
        if len(head) != 8:
            raise _fail(path, "truncated at byte 8 while reading the safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise _fail(path, f"safetensors header claims {n} bytes but the file has {size} bytes")
        if n > _ST_MAX_HEADER:
            raise _fail(path, f"safetensors header claims {n} bytes, over the {_ST_MAX_HEADER} byte limit")
        raw = f.read(n)
    if len(raw) != n:
        raise _fail(path, f"truncated at byte {8 + len(raw)} while reading a {n}-byte safetensors header")
    if raw.count(b"{") > MAX_TENSORS + 2:  # each tensor entry is one object: refuse unparsed
        raise _fail(path, f"safetensors header holds more than {MAX_TENSORS:,} entries, the limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"safetensors header is not UTF-8 (byte {8 + e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_dup_pairs(path))
    except InputError:
        raise
    except RecursionError:
        raise _fail(path, "safetensors header JSON is nested too deeply") from None
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        pos = getattr(e, "pos", None)
        where = f" at header char {pos}" if pos is not None else ""
        raise _fail(path, f"safetensors header is not valid JSON ({msg}{where})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"safetensors header is a JSON {type(header).__name__}, not an object")

    if len(header) - ("__metadata__" in header) > MAX_TENSORS:
        raise _fail(path, f"safetensors header lists {len(header) - ('__metadata__' in header):,} "
                          f"tensors, over the limit of {MAX_TENSORS:,}")
    data_size = size - 8 - n
    base = os.path.basename(path)
    metadata: dict = {}
    tensors: list[tuple[int, int, CheckpointTensor]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise _fail(path, "safetensors __metadata__ is not a JSON object")
            for k, v in entry.items():
                if not isinstance(v, str):
                    raise _fail(path, f"safetensors __metadata__ value for {_short(k)} is not a string")
            metadata = dict(entry)
            continue
        tn = _short(name)
        if not isinstance(entry, dict):
            raise _fail(path, f"tensor {tn}: entry is not a JSON object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise _fail(path, f"tensor {tn}: missing {key!r}")
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
            known = ", ".join(sorted(SAFETENSORS_DTYPE_BITS))
            raise _fail(path, f"tensor {tn}: unknown dtype {_short(str(dtype), 40)} (known: {known})")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise _fail(path, f"tensor {tn}: shape {_short(str(shape), 60)} is not a list of integers")
        if any(d < 0 for d in shape):
            raise _fail(path, f"tensor {tn}: shape {shape} has a negative dimension")
        if len(shape) > 64:
            raise _fail(path, f"tensor {tn}: shape has {len(shape)} dimensions")
        offs = entry["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise _fail(path, f"tensor {tn}: data_offsets {_short(str(offs), 60)} is not two integers")
        begin, end = offs
        if begin < 0 or end < begin:
            raise _fail(path, f"tensor {tn}: data_offsets [{begin}, {end}] need 0 <= begin <= end")
        if end > data_size:
            raise _fail(path, f"tensor {tn}: data ends at byte {end} of the data section, "
                              f"past its end ({data_size} bytes; file is {size} bytes)")
        numel = 1
        for d in shape:
            numel *= d
            if numel > _MAX_NUMEL:
                raise _fail(path, f"tensor {tn}: shape {shape} has too many elements")
        bits = SAFETENSORS_DTYPE_BITS[dtype] * numel
        if bits % 8:
            raise _fail(path, f"tensor {tn}: {numel} x {dtype} is not a whole number of bytes")
        if end - begin != bits // 8:
            raise _fail(path, f"tensor {tn}: data_offsets [{begin}, {end}] span {end - begin} bytes "
                              f"but shape {shape} of {dtype} needs {bits // 8}")
        tensors.append((begin, end, CheckpointTensor(name, tuple(shape), dtype, end - begin, base)))

    tensors.sort(key=lambda e: (e[0], e[1]))
    prev_end, prev_name = 0, None
    for begin, end, t in tensors:
        if end > begin:
            if begin < prev_end:
                raise _fail(path, f"tensor {_short(t.name)} (bytes {begin}-{end}) overlaps "
                                  f"tensor {_short(prev_name)} (ends at {prev_end})")
            prev_end, prev_name = end, t.name
    return [t for _, _, t in tensors], metadata


def read_json_object(path: str, what: str, max_bytes: int = _ST_MAX_HEADER) -> dict:
    """Read a small JSON file that must hold an object (config.json, a shard index), with one clear
    error naming the file for every way it can be wrong."""
    size = _stat_file(path)
    if size > max_bytes:
        raise _fail(path, f"{what} is {size} bytes, too large")
    with _open(path) as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail(path, f"{what} is not UTF-8") from None
    except RecursionError:
        raise _fail(path, f"{what} is nested too deeply") from None
    except ValueError as e:
        raise _fail(path, f"{what} is not valid JSON ({getattr(e, 'msg', e)}, "
                          f"line {getattr(e, 'lineno', '?')})") from None
    if not isinstance(data, dict):
        raise _fail(path, f"{what} is a JSON {type(data).__name__}, not an object")
    return data


def _read_config(folder: str) -> dict | None:
    cfg = os.path.join(folder, "config.json")
    if not os.path.exists(cfg):
        return None
    return read_json_object(cfg, "config.json")


def _read_index(index_path: str) -> tuple[dict[str, str], dict]:
    data = read_json_object(index_path, "index")
    wm = data.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise _fail(index_path, "index has no \"weight_map\" object (or it is empty)")
    if len(wm) > MAX_TENSORS:
        raise _fail(index_path, f"weight_map lists {len(wm):,} tensors, over the limit of "
                                f"{MAX_TENSORS:,}")
    for k, v in wm.items():
        if not isinstance(v, str) or not v:
            raise _fail(index_path, f"weight_map entry {_short(k)} does not name a file")
        if os.path.isabs(v) or os.path.basename(v) != v or v in (".", ".."):
            raise _fail(index_path, f"weight_map entry {_short(k)} names {_short(v)}, "
                                    "not a file in the same folder")
    meta = data.get("metadata") or {}
    if not isinstance(meta, dict):
        raise _fail(index_path, "index \"metadata\" is not a JSON object")
    return wm, dict(meta)


def _read_sharded(path: str, folder: str, index_path: str | None, files: list[str]) -> Checkpoint:
    """Shards from an index (files=[] then) or from a list of safetensors file names."""
    metadata: dict = {}
    if index_path is not None:
        weight_map, metadata = _read_index(index_path)
        files = []
        for fn in weight_map.values():
            if fn not in files:
                files.append(fn)
        for fn in files:
            if not os.path.isfile(os.path.join(folder, fn)):
                raise _fail(index_path, f"shard {fn!r} named in the weight_map does not exist in {folder}")
    else:
        weight_map = None
    tensors: list[CheckpointTensor] = []
    seen: dict[str, str] = {}
    for fn in files:
        shard = os.path.join(folder, fn)
        ts, meta = read_safetensors_header(shard)
        for k, v in meta.items():
            metadata.setdefault(k, v)
        for t in ts:
            if t.name in seen:
                raise _fail(shard, f"tensor {_short(t.name)} also appears in shard {seen[t.name]!r}")
            seen[t.name] = fn
            if weight_map is not None:
                want = weight_map.get(t.name)
                if want is None:
                    raise _fail(shard, f"tensor {_short(t.name)} is not in the index's weight_map")
                if want != fn:
                    raise _fail(shard, f"tensor {_short(t.name)} is mapped to {want!r} in the index "
                                       f"but found in {fn!r}")
        tensors.extend(ts)
        if len(tensors) > MAX_TENSORS:
            raise _fail(shard, f"the shards list more than {MAX_TENSORS:,} tensors together, the "
                               "limit")
    if weight_map is not None:
        for name, fn in weight_map.items():
            if name not in seen:
                raise _fail(os.path.join(folder, fn),
                            f"tensor {_short(name)} mapped to this shard by the index is missing")
    return Checkpoint(path=path, format="safetensors-sharded", tensors=tuple(tensors),
                      metadata=metadata, config=_read_config(folder))


def _has_gguf_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint's headers: a GGUF file, a safetensors file, an index, or a folder."""
    path = os.fspath(path)
    from planner.paths import check_input

    check_input(path, "any", "checkpoint")
    if os.path.isdir(path):
        index = os.path.join(path, _ST_INDEX)
        if os.path.isfile(index):
            return _read_sharded(path, path, index, [])
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            raise _fail(path, f"cannot list folder: {e.strerror or e}") from None
        indexes = [n for n in names if n.endswith(".safetensors.index.json")
                   and os.path.isfile(os.path.join(path, n))]
        if len(indexes) == 1:
            return _read_sharded(path, path, os.path.join(path, indexes[0]), [])
        st = [n for n in names if n.endswith(".safetensors") and os.path.isfile(os.path.join(path, n))]
        if "model.safetensors" in st:
            st = ["model.safetensors"]
        if len(st) == 1:
            ts, meta = read_safetensors_header(os.path.join(path, st[0]))
            return Checkpoint(path=path, format="safetensors", tensors=tuple(ts), metadata=meta,
                              config=_read_config(path))
        if len(st) > 1:
            return _read_sharded(path, path, None, st)
        gg = [n for n in names if n.endswith(".gguf") and os.path.isfile(os.path.join(path, n))]
        if len(gg) == 1:
            return read_gguf(os.path.join(path, gg[0]))
        if len(gg) > 1:
            raise _fail(path, f"folder holds {len(gg)} GGUF files ({', '.join(gg[:3])}…); pass one file")
        raise _fail(path, "folder holds no checkpoint (no *.safetensors, "
                          f"{_ST_INDEX} or *.gguf)")
    size = _stat_file(path)
    base = os.path.basename(path)
    if base.endswith(".gguf") or _has_gguf_magic(path):
        return read_gguf(path)
    if base.endswith(".index.json"):
        return _read_sharded(path, os.path.dirname(path) or ".", path, [])
    if base.endswith(".safetensors") or size >= 8:
        ts, meta = read_safetensors_header(path)
        return Checkpoint(path=path, format="safetensors", tensors=tuple(ts), metadata=meta,
                          config=_read_config(os.path.dirname(path) or "."))
    raise _fail(path, f"file is {size} bytes: neither GGUF nor safetensors")


# --------------------------------------------------------------------------------------------
# GGUF


def _short_float32(v: float) -> float:
    """The shortest decimal that rounds to the same float32 (1e-05, not 9.999999747378752e-06)."""
    for digits in range(1, 10):
        try:
            c = float(f"{v:.{digits}g}")
            if struct.unpack("<f", struct.pack("<f", c))[0] == v:
                return c
        except (OverflowError, ValueError):
            break
    return v


class _GGUFReader:
    """Sequential, bounds-checked reads of a GGUF header, in chunks of at most 64 KiB."""

    def __init__(self, path: str, f, size: int):
        self.path, self.f, self.size = path, f, size
        self.pos = 0
        self.buf = b""
        self.buf_start = 0

    def fail(self, what: str) -> InputError:
        return _fail(self.path, what)

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated at byte {self.size}: {what} needs {n} bytes at offset {self.pos}")
        rel = self.pos - self.buf_start
        if rel < 0 or rel + n > len(self.buf):
            want = min(max(n, _GGUF_CHUNK), self.size - self.pos)
            self.f.seek(self.pos)
            data = self.f.read(want)
            if len(data) < n:
                raise self.fail(f"truncated at byte {self.pos + len(data)}: {what} needs {n} bytes "
                                f"at offset {self.pos} (file changed while reading?)")
            self.buf, self.buf_start, rel = data, self.pos, 0
        self.pos += n
        return memoryview(self.buf)[rel: rel + n]

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated at byte {self.size}: {what} needs {n} bytes at offset {self.pos}")
        self.pos += n

    def remaining(self) -> int:
        return self.size - self.pos

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.take(8, what))[0]

    def string_len(self, what: str) -> int:
        n = self.u64(f"{what} length")
        if n > _GGUF_MAX_STRING:
            raise self.fail(f"{what} at offset {self.pos - 8} claims {n} bytes (limit {_GGUF_MAX_STRING})")
        if n > self.remaining():
            raise self.fail(f"truncated at byte {self.size}: {what} at offset {self.pos - 8} "
                            f"claims {n} bytes, only {self.remaining()} remain")
        return n

    def string(self, what: str, strict: bool) -> str:
        n = self.string_len(what)
        start = self.pos
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise self.fail(f"{what} at offset {start} is not valid UTF-8") from None
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int):
        if vtype in _GGUF_SCALAR_FMT:
            fmt = _GGUF_SCALAR_FMT[vtype]
            v = struct.unpack_from(fmt, self.take(_GGUF_MIN_SIZE[vtype], what))[0]
            if vtype == _GGUF_FLOAT32:
                return _short_float32(v)
            return bool(v) if vtype == _GGUF_BOOL else v
        if vtype == _GGUF_STRING:
            return self.string(what, strict=False)
        if vtype == _GGUF_ARRAY:
            return self.array(what, depth + 1)
        raise self.fail(f"{what}: unknown value type {vtype} at offset {self.pos - 4}")

    def array(self, what: str, depth: int):
        if depth > _GGUF_MAX_ARRAY_DEPTH:
            raise self.fail(f"{what}: arrays nested deeper than {_GGUF_MAX_ARRAY_DEPTH}")
        etype = self.u32(f"{what} element type")
        if etype not in _GGUF_VALUE_NAMES:
            raise self.fail(f"{what}: unknown array element type {etype} at offset {self.pos - 4}")
        count = self.u64(f"{what} element count")
        min_size = _GGUF_MIN_SIZE[etype]
        if count * min_size > self.remaining():
            raise self.fail(f"{what}: array claims {count} {_GGUF_VALUE_NAMES[etype]} elements, "
                            f"more than the {self.remaining()} remaining bytes can hold "
                            f"(truncated at byte {self.size})")
        if count > GGUF_ARRAY_KEEP:
            if etype in _GGUF_SCALAR_FMT:
                self.skip(count * min_size, what)
            elif etype == _GGUF_STRING:
                for i in range(count):
                    self.skip(self.string_len(f"{what}[{i}]"), f"{what}[{i}]")
            else:
                for i in range(count):
                    self.array(f"{what}[{i}]", depth + 1)
            return {"type": "array", "elem_type": _GGUF_VALUE_NAMES[etype], "len": count}
        return [self.value(etype, f"{what}[{i}]", depth) for i in range(count)]


def read_gguf(path: str) -> Checkpoint:
    """Parse a GGUF (v2 or v3, little-endian) file's header: metadata and tensor infos, no data."""
    path = os.fspath(path)
    size = _stat_file(path)
    if size == 0:
        raise _fail(path, "file is empty (0 bytes), not a GGUF file")
    with _open(path) as f:
        r = _GGUFReader(path, f, size)
        magic = bytes(r.take(4, "magic")) if size >= 4 else b""
        if size < 4 or magic != GGUF_MAGIC:
            if size < 4:
                raise _fail(path, f"truncated at byte {size}: too short for the GGUF magic")
            raise _fail(path, f"bad magic {magic!r}: not a GGUF file (expected b'GGUF')")
        version = r.u32("version")
        if version == 1:
            raise _fail(path, "GGUF version 1 is not supported (only 2 and 3); re-convert the model")
        if version not in (2, 3):
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            if swapped in (2, 3):
                raise _fail(path, f"big-endian GGUF (version {swapped}) is not supported")
            raise _fail(path, f"unsupported GGUF version {version} (supported: 2, 3)")
        tensor_count = r.u64("tensor count")
        kv_count = r.u64("metadata key/value count")
        rem = r.remaining()
        if kv_count * _GGUF_MIN_KV > rem:
            raise _fail(path, f"header claims {kv_count} metadata entries but only {rem} bytes "
                              "remain in the file")
        if tensor_count * _GGUF_MIN_TENSOR_INFO + kv_count * _GGUF_MIN_KV > rem:
            raise _fail(path, f"header claims {tensor_count} tensors and {kv_count} metadata entries "
                              f"but only {rem} bytes remain in the file")
        if tensor_count > MAX_TENSORS:
            raise _fail(path, f"header claims {tensor_count:,} tensors, over the limit of "
                              f"{MAX_TENSORS:,}")
        if kv_count > MAX_GGUF_KV:
            raise _fail(path, f"header claims {kv_count:,} metadata entries, over the limit of "
                              f"{MAX_GGUF_KV:,}")

        metadata: dict = {"GGUF.version": version, "GGUF.tensor_count": tensor_count,
                          "GGUF.kv_count": kv_count}
        alignment = _GGUF_DEFAULT_ALIGNMENT
        for i in range(kv_count):
            key_at = r.pos
            key = r.string(f"metadata key #{i}", strict=True)
            if not key:
                raise _fail(path, f"metadata key #{i} at offset {key_at} is empty")
            if key in metadata:
                raise _fail(path, f"duplicate metadata key {_short(key)}")
            vtype = r.u32(f"value type of {_short(key)}")
            if vtype not in _GGUF_VALUE_NAMES:
                raise _fail(path, f"metadata {_short(key)}: unknown value type {vtype} "
                                  f"at offset {r.pos - 4}")
            value = r.value(vtype, f"metadata {_short(key)}", 0)
            if key == "general.alignment":
                if vtype != _GGUF_UINT32 or value == 0 or value & (value - 1):
                    raise _fail(path, f"general.alignment must be a non-zero power-of-two UINT32, "
                                      f"got {_short(str(value), 40)} ({_GGUF_VALUE_NAMES[vtype]})")
                alignment = value
            metadata[key] = value

        infos: list[tuple[str, tuple[int, ...], str, int, int]] = []
        names: set[str] = set()
        for i in range(tensor_count):
            name = r.string(f"tensor #{i} name", strict=True)
            tn = _short(name)
            if name in names:
                raise _fail(path, f"duplicate tensor name {tn}")
            names.add(name)
            n_dims = r.u32(f"tensor {tn} n_dims")
            if n_dims == 0 or n_dims > _GGUF_MAX_DIMS:
                raise _fail(path, f"tensor {tn}: n_dims {n_dims} out of range 1..{_GGUF_MAX_DIMS}")
            dims_raw = r.take(8 * n_dims, f"tensor {tn} dims")
            ne = struct.unpack_from(f"<{n_dims}Q", dims_raw)
            numel = 1
            for d in ne:
                if d >= (1 << 63):
                    raise _fail(path, f"tensor {tn}: dimension {d} is out of range")
                numel *= d
                if numel > _MAX_NUMEL:
                    raise _fail(path, f"tensor {tn}: dims {list(ne)} have too many elements")
            gtype = r.u32(f"tensor {tn} type")
            if gtype not in GGML_TYPES:
                raise _fail(path, f"tensor {tn}: unknown ggml type {gtype}")
            tname, block, tsize = GGML_TYPES[gtype]
            if ne[0] % block:
                raise _fail(path, f"tensor {tn}: innermost dim {ne[0]} is not a multiple of "
                                  f"the {tname} block size {block}")
            nbytes = numel // block * tsize
            offset = r.u64(f"tensor {tn} offset")
            if offset % alignment:
                raise _fail(path, f"tensor {tn}: data offset {offset} is not a multiple of "
                                  f"the alignment {alignment}")
            infos.append((name, tuple(reversed(ne)), tname, nbytes, offset))

        header_end = r.pos
    data_start = -(-header_end // alignment) * alignment
    data_size = size - data_start
    base = os.path.basename(path)
    prev_end, prev_name = 0, None
    for name, shape, tname, nbytes, offset in sorted(infos, key=lambda e: (e[4], e[3])):
        if nbytes == 0:
            continue
        if offset + nbytes > data_size:
            raise _fail(path, f"tensor {_short(name)}: data [{offset}, {offset + nbytes}) past the "
                              f"end of the data section ({max(data_size, 0)} bytes from byte "
                              f"{data_start}; file is {size} bytes)")
        if offset < prev_end:
            raise _fail(path, f"tensor {_short(name)} (data at {offset}) overlaps tensor "
                              f"{_short(prev_name)} (ends at {prev_end})")
        prev_end, prev_name = offset + nbytes, name
    tensors = tuple(CheckpointTensor(n, s, t, b, base) for n, s, t, b, _ in infos)
    return Checkpoint(path=path, format="gguf", tensors=tensors, metadata=metadata, config=None)


def gguf_scalar(meta: dict, key: str, default=None):
    """A scalar metadata value (int/float/bool/str), or ``default`` when absent or an array."""
    v = meta.get(key, default)
    if isinstance(v, (list, dict)):
        return default
    return v


def gguf_array_len(meta: dict, key: str) -> int | None:
    """The length of an array metadata value, kept whole or summarised; None if absent or scalar."""
    v = meta.get(key)
    if isinstance(v, list):
        return len(v)
    if isinstance(v, dict) and v.get("type") == "array":
        return v.get("len")
    return None
