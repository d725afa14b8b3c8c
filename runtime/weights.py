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

import numpy as np
import torch

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
    """A checkpoint: names and shapes (as the inventory names them) and a tensor reader."""

    def __init__(self, path: str):
        self.path = path
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._readers: dict[str, object] = {}

    def get(self, name: str) -> torch.Tensor:  # fp32, inventory layout (out, in)
        raise NotImplementedError


def _hf_names(spec: ModelSpec, name: str) -> list[tuple[str, object]]:
    """Checkpoint tensor names (and a transform: None, ('T',), ('part', i, n)) that hold inventory
    tensor ``name`` in the family's HF layout. First entry that exists wins."""
    cands: list[tuple[str, object]] = [(name, None)]
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", name)
    fam = spec.family
    if fam == "mixtral" and m:
        rest = m.group(2)
        rest = rest.replace("mlp.gate.", "block_sparse_moe.gate.")
        rest = re.sub(r"^mlp\.experts\.(\d+)\.gate_proj", r"block_sparse_moe.experts.\1.w1", rest)
        rest = re.sub(r"^mlp\.experts\.(\d+)\.up_proj", r"block_sparse_moe.experts.\1.w3", rest)
        rest = re.sub(r"^mlp\.experts\.(\d+)\.down_proj", r"block_sparse_moe.experts.\1.w2", rest)
        cands.append((f"model.layers.{m.group(1)}.{rest}", None))
    if fam == "phi3" and m:
        i, rest = m.group(1), m.group(2)
        q, kv = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
        for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
            if rest == f"self_attn.{part}.weight":
                lo = [0, q, q + kv][j]
                cands.append((f"model.layers.{i}.self_attn.qkv_proj.weight",
                              ("rows", lo, lo + (q if j == 0 else kv))))
        for j, part in enumerate(("gate_proj", "up_proj")):
            if rest == f"mlp.{part}.weight":
                cands.append((f"model.layers.{i}.mlp.gate_up_proj.weight",
                              ("rows", j * spec.ffn, (j + 1) * spec.ffn)))
    if fam == "opt":
        n = name.replace("model.", "model.decoder.", 1)
        if m:
            rest = m.group(2).replace("input_layernorm", "self_attn_layer_norm")
            rest = rest.replace("post_attention_layernorm", "final_layer_norm")
            rest = rest.replace("self_attn.o_proj", "self_attn.out_proj")
            rest = rest.replace("mlp.up_proj", "fc1").replace("mlp.down_proj", "fc2")
            n = f"model.decoder.layers.{m.group(1)}.{rest}"
        elif name.startswith("model.norm."):
            n = name.replace("model.norm.", "model.decoder.final_layer_norm.")
        cands.append((n, None))
    if fam == "gpt2":
        h = spec.hidden
        top = {"model.embed_tokens.weight": "wte.weight", "model.embed_positions.weight": "wpe.weight",
               "model.norm.weight": "ln_f.weight", "model.norm.bias": "ln_f.bias"}
        if name in top:
            n = top[name]
            cands += [(n, None), ("transformer." + n, None)]
        elif m:
            i, rest = m.group(1), m.group(2)
            simple = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}
            tr: object = None
            n = None
            for k, v in simple.items():
                if rest.startswith(k):
                    n = rest.replace(k, v)
            pm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if pm:
                j = "qkv".index(pm.group(1))
                n = f"attn.c_attn.{pm.group(2)}"
                tr = ("cols_T", j * h, (j + 1) * h) if pm.group(2) == "weight" else \
                     ("rows", j * h, (j + 1) * h)
            conv = {"self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc",
                    "mlp.down_proj": "mlp.c_proj"}
            for k, v in conv.items():
                if rest.startswith(k + "."):
                    kind = rest[len(k) + 1:]
                    n = f"{v}.{kind}"
                    tr = ("T",) if kind == "weight" else None
            if n:
                cands += [(f"h.{i}.{n}", tr), (f"transformer.h.{i}.{n}", tr)]
    if fam in ("falcon", "bloom"):
        cands += _falcon_bloom_names(spec, name, m)
    if fam == "glm":
        cands += _glm_names(spec, name, m)
    if fam == "deepseek_v3" and m:
        # HF DeepSeek-V3 names are the inventory's; the rotary rows are stored interleaved (pairs,
        # the reference code's complex multiply; transformers' rope_interleave): read them as
        # rotate-half [evens | odds], which is what HF computes before its rotary embedding
        rest, r = m.group(2), spec.qk_rope_dim
        if rest in ("self_attn.q_b_proj.weight", "self_attn.q_proj.weight"):
            cands = [(name, ("rope_rows", spec.heads, spec.q_head_dim, spec.qk_nope_dim, r))]
        elif rest == "self_attn.kv_a_proj_with_mqa.weight":
            cands = [(name, ("rope_rows", 1, spec.kv_lora_rank + r, spec.kv_lora_rank, r))]
    return cands


def _falcon_bloom_names(spec: ModelSpec, name: str, m) -> list[tuple[str, object]]:
    """HF Falcon (RWForCausalLM / FalconForCausalLM) and BLOOM names, with or without the
    ``transformer.`` prefix. Both fuse q/k/v into ``query_key_value`` as [kv groups, (heads/kv q
    heads, k, v), head_dim]: Falcon's new decoder architecture literally, Falcon-7B's multi-query
    layout (q heads, k, v) as the case kv = 1, BLOOM's per-head (q, k, v) as the case kv = heads."""
    top = {"model.embed_tokens.weight": "word_embeddings.weight",
           "model.embed_layernorm.weight": "word_embeddings_layernorm.weight",
           "model.embed_layernorm.bias": "word_embeddings_layernorm.bias",
           "model.norm.weight": "ln_f.weight", "model.norm.bias": "ln_f.bias"}
    out: list[tuple[str, object]] = []
    if name in top:
        return [(top[name], None), ("transformer." + top[name], None)]
    if not m:
        return out
    i, rest = m.group(1), m.group(2)
    ns: list[tuple[str, object]] = []
    pm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
    if pm:
        tr = ("fused_qkv", spec.kv_heads, spec.heads // spec.kv_heads, spec.head_dim,
              "qkv".index(pm.group(1)))
        ns.append((f"self_attention.query_key_value.{pm.group(2)}", tr))
    for ours, theirs in (("self_attn.o_proj.", "self_attention.dense."),
                         ("mlp.up_proj.", "mlp.dense_h_to_4h."),
                         ("mlp.down_proj.", "mlp.dense_4h_to_h.")):
        if rest.startswith(ours):
            ns.append((theirs + rest[len(ours):], None))
    if spec.family == "falcon" and spec.parallel_attn and spec.parallel_norms == 2:
        for ours, theirs in (("input_layernorm.", "ln_attn."),
                             ("post_attention_layernorm.", "ln_mlp.")):
            if rest.startswith(ours):
                ns.append((theirs + rest[len(ours):], None))
    if rest.startswith(("input_layernorm.", "post_attention_layernorm.")):
        ns.append((rest, None))
    for n, tr in ns:
        out += [(f"h.{i}.{n}", tr), (f"transformer.h.{i}.{n}", tr)]
    return out


def _glm_names(spec: ModelSpec, name: str, m) -> list[tuple[str, object]]:
    """GLM-130B (SwissArmyTransformer) names, for a single-partition checkpoint converted to
    safetensors: query_key_value holds q, k, v as contiguous thirds; dense_h_to_4h holds the GeGLU
    halves [x1; x2] with out = x1 * gelu(x2), so x2 is the gate and x1 the up projection. Not
    checked against a real GLM-130B checkpoint (it ships as model-parallel .pt shards)."""
    top = {"model.embed_tokens.weight": "transformer.word_embeddings.weight",
           "model.norm.weight": "transformer.final_layernorm.weight",
           "model.norm.bias": "transformer.final_layernorm.bias"}
    if name in top:
        return [(top[name], None)]
    if not m:
        return []
    i, rest = m.group(1), m.group(2)
    p = f"transformer.layers.{i}."
    q, w = spec.heads * spec.head_dim, spec.ffn
    pm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
    if pm:
        j = "qkv".index(pm.group(1))
        return [(p + f"attention.query_key_value.{pm.group(2)}", ("rows", j * q, (j + 1) * q))]
    pm = re.match(r"mlp\.(gate|up)_proj\.(weight|bias)$", rest)
    if pm:
        lo = w if pm.group(1) == "gate" else 0
        return [(p + f"mlp.dense_h_to_4h.{pm.group(2)}", ("rows", lo, lo + w))]
    for ours, theirs in (("self_attn.o_proj.", "attention.dense."),
                         ("mlp.down_proj.", "mlp.dense_4h_to_h.")):
        if rest.startswith(ours):
            return [(p + theirs + rest[len(ours):], None)]
    if rest.startswith(("input_layernorm.", "post_attention_layernorm.")):
        return [(p + rest, None)]
    return []


def _apply(x: torch.Tensor, tr) -> torch.Tensor:
    if tr is None:
        return x
    if tr[0] == "T":
        return x.t()
    if tr[0] == "rows":
        return x[tr[1]:tr[2]]
    if tr[0] == "cols_T":
        return x[:, tr[1]:tr[2]].t()
    if tr[0] == "fused_qkv":  # rows [kv, g + 2, hd]: g query heads, then k, then v, per KV group
        _, kv, g, hd, j = tr
        y = x.reshape(kv, g + 2, hd, *x.shape[1:])
        part = y[:, :g] if j == 0 else y[:, g + j - 1:g + j]
        return part.reshape(-1, *x.shape[1:])
    if tr[0] == "rope_rows":  # rows [blocks, block]; in each block rows off..off+r interleaved
        _, blocks, block, off, r = tr
        y = x.reshape(blocks, block, *x.shape[1:])
        rot = y[:, off:off + r].reshape(blocks, r // 2, 2, *x.shape[1:]).transpose(1, 2)
        return torch.cat([y[:, :off], rot.reshape(blocks, r, *x.shape[1:]), y[:, off + r:]],
                         dim=1).reshape(x.shape)
    raise ValueError(tr)


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
        self.resolved: dict[str, tuple[str, object]] = {}
        for t in inventory(spec):
            for cname, tr in _hf_names(spec, t.name):
                if cname in ck_shapes:
                    self.resolved[t.name] = (cname, tr)
                    shape = ck_shapes[cname]
                    if tr is not None:
                        shape = tuple(_apply(torch.empty(shape, device="meta"), tr).shape)
                    self.shapes[t.name] = shape
                    break

    def get(self, name: str) -> torch.Tensor:
        cname, tr = self.resolved[name]
        try:
            x = self._readers[self.where[cname]].get_tensor(cname)
            if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and x.dim() == 2 \
                    and cname + "_scale_inv" in self.where:
                sname = cname + "_scale_inv"
                x = _dequant_fp8(x, self._readers[self.where[sname]].get_tensor(sname))
        except Exception as e:
            raise RuntimeError_(f"{self.where[cname]}: cannot read tensor {cname} ({e})") from None
        return _apply(x, tr).float().contiguous()


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE) back to HF's rotate-half layout."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


class GGUFSource(Source):
    def __init__(self, path: str, spec: ModelSpec):
        super().__init__(path)
        from planner.inspect import canonical_name
        try:
            import gguf
            self.reader = gguf.GGUFReader(path)
        except Exception as e:
            raise RuntimeError_(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self.spec = spec
        self.tensors = {}
        for t in self.reader.tensors:
            cname = canonical_name(t.name, "gguf")
            if cname is None:
                continue
            self.tensors[cname] = t
            self.shapes[cname] = tuple(int(d) for d in reversed(t.shape.tolist()))

    def get(self, name: str) -> torch.Tensor:
        from gguf.quants import dequantize
        t = self.tensors[name]
        try:
            arr = dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise RuntimeError_(f"{self.path}: cannot dequantize tensor {t.name} ({e})") from None
        arr = np.asarray(arr, dtype=np.float32).reshape(self.shapes[name])
        if name.endswith("self_attn.q_proj.weight"):
            arr = _unpermute(arr, self.spec.heads)
        elif name.endswith("self_attn.k_proj.weight"):
            arr = _unpermute(arr, self.spec.kv_heads)
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
