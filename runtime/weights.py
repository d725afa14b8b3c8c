"""Materialize a meta model one tensor at a time: deterministic random values, or a local checkpoint
(HF safetensors, sharded or not, or GGUF) streamed tensor by tensor and quantized as it goes.

At most one full tensor (in fp32) and its shard exist beside the already-materialized model, so peak
host memory stays near the model's own bytes plus the largest tensor (GLM-130B's loader needed the
whole fp32 model).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import replace

import numpy as np
import torch

from planner import names
from planner.names import Piece
from planner.spec import ModelSpec, inventory
from runtime.model import Model, RuntimeError_, set_tensor, shard_of


def _seed(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


def random_tensor(t, seed: int = 0) -> torch.Tensor:
    """The deterministic random value of inventory tensor ``t`` (fp32, full shape)."""
    if t.role == "norm" and t.name.endswith(".weight"):
        return torch.ones(t.shape)
    g = torch.Generator().manual_seed(_seed(t.name, seed))
    std = 0.02 if t.role != "bias" and not t.name.endswith(".bias") else 0.002
    return torch.randn(t.shape, generator=g) * std


def materialize_random(model: Model, seed: int = 0) -> None:
    for t in inventory(model.spec):
        full = random_tensor(t, seed)
        set_tensor(model, t.name, shard_of(t, full, model.spec, model.lay))
        del full


# -- checkpoints -------------------------------------------------------------------------------

class Source:
    """A checkpoint: names and shapes (as the inventory names them) and a tensor reader. Which
    checkpoint tensors hold which inventory tensors is planner/names.py's (``resolved``)."""

    def __init__(self, path: str):
        self.path = path
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.resolved: dict[str, list[tuple[str, Piece]]] = {}
        self._readers: dict[str, object] = {}

    def _resolve(self, spec: ModelSpec, ck_shapes: dict[str, tuple[int, ...]], fmt: str) -> None:
        want = {t.name for t in inventory(spec)}
        for cname, shape in ck_shapes.items():
            for piece in names.pieces(spec, cname, fmt):
                if piece.target in want and not piece.scales:
                    self.resolved.setdefault(piece.target, []).append((cname, piece))
        for target, parts in self.resolved.items():
            try:
                self.shapes[target] = _target_shape([(pc, ck_shapes[c]) for c, pc in parts])
            except ValueError as e:
                raise RuntimeError_(f"{self.path}: tensor {parts[0][0]} cannot hold {target} "
                                    f"({e})") from None

    def _read(self, cname: str, index: int | None = None) -> torch.Tensor:
        """Checkpoint tensor ``cname`` (only its element ``index`` of dim 0 when given: one
        expert of a stacked tensor, without reading the others), fp32, its own layout."""
        raise NotImplementedError

    def _value(self, cname: str, piece: Piece) -> torch.Tensor:
        ops = piece.ops
        if ops and ops[0][0] == "index" and ops[0][1] == 0:
            return apply_piece(self._read(cname, ops[0][2]), replace(piece, ops=ops[1:]))
        return apply_piece(self._read(cname), piece)

    def get(self, name: str) -> torch.Tensor:
        """Inventory tensor ``name``: fp32, inventory layout (out, in)."""
        parts = self.resolved[name]
        if len(parts) == 1 and not parts[0][1].into:
            return self._value(*parts[0]).float().contiguous()
        return _assemble(self.shapes[name], [(pc, self._value(c, pc)) for c, pc in parts])


def _op(x: torch.Tensor, op) -> torch.Tensor:
    kind = op[0]
    if kind == "index":
        return x.select(op[1], op[2])
    if kind == "slice":
        idx = [slice(None)] * x.dim()
        idx[op[1]] = slice(op[2], op[3], op[4])
        return x[tuple(idx)]
    if kind == "T":
        return x.transpose(-1, -2)
    if kind == "fused_qkv":  # rows [kv, g + 2, hd]: g query heads, then k, then v, per KV group
        _, kv, g, hd, j = op
        y = x.reshape(kv, g + 2, hd, *x.shape[1:])
        part = y[:, :g] if j == 0 else y[:, g + j - 1:g + j]
        return part.reshape(-1, *x.shape[1:])
    if kind == "rope_rows":  # rows [blocks, block]; in each block rows off..off+r interleaved
        _, blocks, block, off, r = op
        y = x.reshape(blocks, block, *x.shape[1:])
        rot = y[:, off:off + r].reshape(blocks, r // 2, 2, *x.shape[1:]).transpose(1, 2)
        return torch.cat([y[:, :off], rot.reshape(blocks, r, *x.shape[1:]), y[:, off + r:]],
                         dim=1).reshape(x.shape)
    if kind == "unpermute":  # llama.cpp's interleaved q/k rows back to HF's rotate-half layout
        heads = op[1]
        rows = x.shape[0]
        return x.reshape(heads, rows // heads // 2, 2, *x.shape[1:]).transpose(1, 2).reshape(
            x.shape)
    if kind == "mxfp4":
        raise RuntimeError_("MXFP4 expert weights (gpt-oss's published checkpoint) cannot be "
                            "loaded yet; use a bf16 checkpoint")
    raise ValueError(op)


def apply_piece(x: torch.Tensor, piece: Piece) -> torch.Tensor:
    """The inventory tensor, or the part of it that ``piece.into`` names, that checkpoint tensor
    ``x`` holds (planner/names.py says which, as data)."""
    for op in piece.ops:
        x = _op(x, op)
    return x + piece.offset if piece.offset else x


def _assemble(shape: tuple[int, ...], parts: list[tuple[Piece, torch.Tensor]]) -> torch.Tensor:
    """An inventory tensor from the parts several checkpoint tensors hold (Piece.into)."""
    out = torch.empty(shape)
    for piece, y in parts:
        _, heads, lo, hi = piece.into
        out.view(heads, -1, *shape[1:])[:, lo:hi] = y
    return out


def _target_shape(parts: list[tuple[Piece, tuple[int, ...]]]) -> tuple[int, ...]:
    """The shape of an inventory tensor given its pieces and their checkpoint shapes."""
    if len(parts) == 1 and not parts[0][0].into:
        return names.ops_shape(parts[0][1], parts[0][0].ops)
    rows, rest = 0, ()
    for piece, shape in parts:
        part = names.ops_shape(shape, piece.ops)  # (heads, hi - lo, ...)
        rows += part[0] * part[1]
        rest = part[2:]
    return (rows, *rest)


FP8_BLOCK = 128
"""DeepSeek-V3's fp8 checkpoints: ``weight`` float8_e4m3fn with ``weight_scale_inv`` [ceil(out /
128), ceil(in / 128)] fp32, one scale per 128 x 128 block (quantization_config.weight_block_size)."""


def _dequant_fp8(x: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    n, k = x.shape
    s = scale_inv.float().repeat_interleave(FP8_BLOCK, 0)[:n].repeat_interleave(FP8_BLOCK, 1)[:, :k]
    return x.float() * s


class SafetensorsSource(Source):
    def __init__(self, path: str, spec: ModelSpec):
        super().__init__(path)
        from safetensors import safe_open
        files: list[str]
        if os.path.isdir(path):
            idx = os.path.join(path, "model.safetensors.index.json")
            if os.path.exists(idx):
                try:
                    with open(idx) as f:
                        wmap = json.load(f)["weight_map"]
                    files = sorted(set(wmap.values()))
                except (ValueError, KeyError, TypeError) as e:
                    raise RuntimeError_(f"{idx}: not a valid shard index ({e})") from None
            else:
                files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            files = [os.path.join(path, f) for f in files]
        else:
            files = [path]
        if not files:
            raise RuntimeError_(f"{path}: no .safetensors files")
        self.where: dict[str, str] = {}
        ck_shapes: dict[str, tuple[int, ...]] = {}
        for fpath in files:
            try:
                h = safe_open(fpath, framework="pt")
                for k in h.keys():
                    self.where[k] = fpath
                    ck_shapes[k] = tuple(h.get_slice(k).get_shape())
                self._readers[fpath] = h
            except FileNotFoundError:
                raise RuntimeError_(f"{fpath}: shard file is missing") from None
            except Exception as e:  # safetensors raises SafetensorError for corrupt headers
                raise RuntimeError_(f"{fpath}: not a readable safetensors file ({e})") from None
        self._resolve(spec, ck_shapes, "safetensors")

    def _read(self, cname: str, index: int | None = None) -> torch.Tensor:
        try:
            h = self._readers[self.where[cname]]
            if index is not None:
                return h.get_slice(cname)[index].float()
            x = h.get_tensor(cname)
            if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and x.dim() == 2 \
                    and cname + "_scale_inv" in self.where:
                sname = cname + "_scale_inv"
                x = _dequant_fp8(x, self._readers[self.where[sname]].get_tensor(sname))
        except Exception as e:
            raise RuntimeError_(f"{self.where[cname]}: cannot read tensor {cname} ({e})") from None
        return x.float()


class GGUFSource(Source):
    def __init__(self, path: str, spec: ModelSpec):
        super().__init__(path)
        try:
            import gguf
            self.reader = gguf.GGUFReader(path)
        except Exception as e:
            raise RuntimeError_(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self.spec = spec
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._resolve(spec, {n: tuple(int(d) for d in reversed(t.shape.tolist()))
                             for n, t in self.tensors.items()}, "gguf")

    def _read(self, cname: str, index: int | None = None) -> torch.Tensor:
        from gguf.quants import dequantize
        t = self.tensors[cname]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        data = t.data
        if index is not None:  # one expert of a stacked tensor: its rows of the memory map
            data = data.reshape(shape[0], -1, *data.shape[-1:]) if data.ndim > 1 else data
            data, shape = data[index], shape[1:]
        try:
            arr = dequantize(data, t.tensor_type)
        except Exception as e:
            raise RuntimeError_(f"{self.path}: cannot dequantize tensor {t.name} ({e})") from None
        arr = np.asarray(arr, dtype=np.float32).reshape(shape)
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # an F32 tensor is a view of the read-only memory map
            arr = arr.copy()
        return torch.from_numpy(arr)


def open_checkpoint(path: str, spec: ModelSpec) -> Source:
    if not os.path.exists(path):
        raise RuntimeError_(f"{path}: no such checkpoint")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFSource(path, spec)
    return SafetensorsSource(path, spec)


def check_against(spec: ModelSpec, src: Source) -> None:
    """Every inventory tensor must be in the checkpoint with the same shape (errors name it)."""
    missing = []
    for t in inventory(spec):
        name = t.name
        if name == "lm_head.weight" and name not in src.shapes and spec.tied_embeddings:
            continue
        if name not in src.shapes:
            missing.append(name)
            continue
        if tuple(src.shapes[name]) != tuple(t.shape):
            raise RuntimeError_(f"{src.path}: tensor {name} has shape {list(src.shapes[name])} but "
                                f"the plan's model expects {list(t.shape)} (plan and checkpoint "
                                "do not match)")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise RuntimeError_(f"{src.path}: missing tensor(s) {', '.join(missing[:3])}{more} that "
                            f"the plan's model needs")


def materialize_checkpoint(model: Model, src: Source) -> None:
    check_against(model.spec, src)
    for t in inventory(model.spec):
        full = src.get(t.name)
        if t.role == "linear" or t.role == "expert" or t.role == "lm_head":
            if not torch.isfinite(full).all():
                raise RuntimeError_(f"{src.path}: tensor {t.name} holds NaN/inf values")
        set_tensor(model, t.name, shard_of(t, full, model.spec, model.lay).contiguous())
        del full
