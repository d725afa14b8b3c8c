"""Checkpoint tensor names: which inventory tensors (planner/spec.py, HF Llama layout) each
tensor of a Hugging Face safetensors checkpoint or a llama.cpp GGUF holds, for every family.

This is the one place that knows checkpoint names. A family picks a naming convention here
(``HF_CONVENTION``, ``GGUF_CONVENTION``) and nowhere else; every structural difference between
models is a ModelSpec field.

The mapping runs from a checkpoint tensor to the inventory: :func:`pieces` returns the
:class:`Piece` s a checkpoint tensor holds. Most tensors hold exactly one inventory tensor under
another name. A fused tensor (Phi-3 ``qkv_proj``, GLM-4 ``gate_up_proj``, BLOOM
``query_key_value``) holds several, each a slice of it; a stacked expert tensor (gpt-oss and
Llama 4 ``experts.gate_up_proj`` (E, hidden, 2 x ffn), GGUF ``blk.N.ffn_gate_exps.weight``
(E, ffn, hidden)) holds one tensor per expert, expert e being index e of dim 0; DeepSeek's GGUF
``attn_k_b``/``attn_v_b`` are two parts of one inventory tensor (``kv_b_proj``). A Piece says
all of that as data: a list of ops (index, slice, transpose, ...) that turns the checkpoint
tensor into the inventory tensor or into the part of it given by ``into``.
:func:`piece_shape` computes the result's shape in pure Python (the planner's checks);
runtime/weights.py ``apply_piece`` is the one function that applies a Piece to a tensor.

GGUF names are as the ``gguf`` Python package 0.19.0 lists them (``gguf.constants.MODEL_TENSORS``
and ``TENSOR_NAMES`` per ``MODEL_ARCH``; its ``TensorNameMap`` gives the HF name each comes
from) and as llama.cpp's convert_hf_to_gguf.py writes them (ggml-org/llama.cpp @a458664f):
it stacks experts into ``*_exps``, splits gpt-oss's interleaved ``gate_up_proj`` and DeepSeek's
``kv_b_proj`` (k_b transposed), permutes Llama/Mistral q/k rows for its interleaved RoPE (not
Llama 4's, which is interleaved already), and stores Gemma 2/3 norm weights as 1 + w.

Pure Python: importing this module must stay light (tests/test_import_light.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.spec import ModelSpec

Op = tuple
"""One step from a checkpoint tensor towards an inventory tensor, applied in order:

- ``("index", axis, i)``: element i along ``axis`` (the axis goes away): expert i of a stack.
- ``("slice", axis, start, stop, step)``: ``x[start:stop:step]`` along ``axis`` (stop None =
  to the end): a part of a fused tensor, or every other column of an interleaved one.
- ``("T",)``: swap the last two axes ((in, out) storage to the inventory's (out, in)).
- ``("fused_qkv", kv, g, hd, j)``: rows [kv groups, g query heads + k + v, hd]: part j (0 q, 1 k,
  2 v) of a Falcon/BLOOM ``query_key_value``.
- ``("rope_rows", blocks, block, off, r)``: rows [blocks, block]; in each block rows off..off+r
  hold interleaved rotary pairs, read back as rotate-half [evens | odds] (DeepSeek).
- ``("unpermute", heads)``: undo convert_hf_to_gguf's Llama q/k row permutation.
- ``("mxfp4",)``: bytes (..., n / 32, 16) of packed FP4 values -> values (..., n) (gpt-oss's
  published checkpoint; named here, not dequantized by the runtime yet).
"""


@dataclass(frozen=True)
class Piece:
    """One inventory tensor (or a part of one) that a checkpoint tensor holds."""

    target: str
    """Inventory name."""
    ops: tuple[Op, ...] = ()
    """How to read it out of the checkpoint tensor (see Op)."""
    into: tuple = ()
    """() = the whole target; ``("head_rows", heads, lo, hi)``: the target's rows viewed as
    [heads, rows / heads], this piece is rows lo..hi of every head (DeepSeek GGUF k_b / v_b)."""
    offset: float = 0.0
    """Added to every value once read (Gemma GGUF norms are stored as 1 + w: -1)."""
    scales: bool = False
    """The tensor holds quantization scales of ``target``, not its values (fp8
    ``weight_scale_inv``, MXFP4 ``_scales``): its bytes belong to the target, its elements do
    not count as the target's."""


# -- shapes (pure Python) --------------------------------------------------------------------

def _norm_axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def ops_shape(shape: tuple[int, ...], ops: tuple[Op, ...]) -> tuple[int, ...]:
    """Shape after ``ops``; ValueError when an op does not fit the shape."""
    s = list(shape)
    for op in ops:
        kind = op[0]
        if kind == "index":
            a = _norm_axis(op[1], len(s))
            if not 0 <= op[2] < s[a]:
                raise ValueError(f"index {op[2]} out of range for axis {a} of {shape}")
            del s[a]
        elif kind == "slice":
            a = _norm_axis(op[1], len(s))
            n = len(range(*slice(op[2], op[3], op[4]).indices(s[a])))
            stop = s[a] if op[3] is None else op[3]
            if n == 0 or stop > s[a]:
                raise ValueError(f"slice {op[2]}:{op[3]}:{op[4]} does not fit axis {a} of {shape}")
            s[a] = n
        elif kind == "T":
            if len(s) < 2:
                raise ValueError(f"cannot transpose shape {shape}")
            s[-1], s[-2] = s[-2], s[-1]
        elif kind == "fused_qkv":
            _, kv, g, hd, j = op
            if s[0] != kv * (g + 2) * hd:
                raise ValueError(f"{s[0]} rows are not {kv} groups of {g} + 2 heads of {hd}")
            s[0] = kv * (g if j == 0 else 1) * hd
        elif kind in ("rope_rows", "unpermute"):
            pass
        elif kind == "mxfp4":
            if len(s) < 2 or s[-1] != 16:
                raise ValueError(f"MXFP4 blocks must end in 16 bytes, got {shape}")
            s[-2:] = [s[-2] * 32]
        else:
            raise ValueError(f"unknown op {op!r}")
    return tuple(s)


def consumed(shape: tuple[int, ...], piece: Piece) -> int:
    """Checkpoint elements (stored values or bytes) a piece reads."""
    out = ops_shape(shape, tuple(op for op in piece.ops if op[0] != "mxfp4"))
    n = 1
    for d in out:
        n *= d
    return n


def piece_elements(shape: tuple[int, ...], piece: Piece) -> int:
    """Inventory elements a piece supplies (0 for scales)."""
    if piece.scales:
        return 0
    n = 1
    for d in ops_shape(shape, piece.ops):
        n *= d
    return n


# -- what a checkpoint tensor is, when it is no inventory tensor -------------------------------

BUFFERS = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")
"""Checkpoint entries that are buffers, not parameters (Llama-2's rotary inv_freq, GPT-2's
masks)."""

VISION_PREFIXES = ("vision_tower.", "vision_model.", "multi_modal_projector.")
"""Vision tower and projector tensors of multimodal checkpoints (Gemma 3, Mistral 3: vision_tower,
multi_modal_projector; Llama 4: vision_model, multi_modal_projector), named in the inventory as in
the published checkpoint; transformers 5 puts them under ``model.``, which is dropped."""

_TEXT_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                  ("language_model.lm_head.", "lm_head."), ("language_model.", ""))
"""Multimodal checkpoints' text model: ``language_model.model.`` in the published Gemma 3,
Llama 4 and Mistral 3 checkpoints, ``model.language_model.`` as transformers 5 saves them."""

HF_VISION_NAMES = {"gemma3": ("vision_tower.", "vision_tower.vision_model.")}
"""Family -> (prefix, the published checkpoint's prefix) for a vision tower that transformers 5's
save_pretrained writes without its inner module name (Gemma 3's SigLIP: google/gemma-3-*
store ``vision_tower.vision_model.*``, a transformers 5.24 save ``vision_tower.*``)."""

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def _text_name(name: str, family: str = "") -> str:
    """The name with multimodal prefixes resolved: the text model's as the inventory names it,
    the vision tower's as the published checkpoint does."""
    for p in VISION_PREFIXES:
        if name.startswith("model." + p):
            name = name[len("model."):]
    if name.startswith(VISION_PREFIXES):
        old, new = HF_VISION_NAMES.get(family, ("", ""))
        if old and name.startswith(old) and not name.startswith(new):
            return new + name[len(old):]
        return name
    for old, new in _TEXT_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


GGUF_BUFFERS = re.compile(r"^(rope_freqs|rope_factors_long|rope_factors_short)\.weight$"
                          r"|^blk\.\d+\.attn_rot_embd\.weight$")
"""GGUF tensors llama.cpp computes from the config (Llama 3.1 / Phi-3 rotary frequency factors), not
model parameters."""


def ignored(spec: ModelSpec, name: str, fmt: str) -> str | None:
    """Why a checkpoint tensor belongs to no inventory tensor: 'buffer', 'mtp' (one of the
    spec's mtp_layers after the last block, or GGUF's ``blk.N.nextn.*``), or None."""
    if fmt == "gguf":
        if GGUF_BUFFERS.search(name):
            return "buffer"
        m = _BLK.match(name)
        if m and (m.group(2).startswith("nextn.") or _mtp(spec, m.group(1))):
            return "mtp"
        return None
    if BUFFERS.search(name):
        return "buffer"
    m = _LAYER.match(_text_name(name))
    if m and _mtp(spec, m.group(1)):
        return "mtp"
    return None


def _mtp(spec: ModelSpec, index: str) -> bool:
    """Layer ``index`` is one of the spec's multi-token-prediction layers."""
    return spec.layers <= int(index) < spec.layers + spec.mtp_layers


# -- Hugging Face conventions ----------------------------------------------------------------

def _one(target: str, *ops: Op, offset: float = 0.0) -> tuple[Piece, ...]:
    return (Piece(target, tuple(ops), offset=offset),)


def _rows(spec: ModelSpec, prefix: str, kind: str, parts: tuple[tuple[str, int], ...]
          ) -> tuple[Piece, ...]:
    """Consecutive row blocks of a fused tensor: parts = (inventory suffix, rows) in order."""
    out, lo = [], 0
    for suffix, n in parts:
        out.append(Piece(f"{prefix}{suffix}.{kind}", (("slice", 0, lo, lo + n, 1),)))
        lo += n
    return tuple(out)


def _qkv_rows(spec: ModelSpec) -> tuple[tuple[str, int], ...]:
    q, kv = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    return (("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv))


def _gate_up_rows(width: int) -> tuple[tuple[str, int], ...]:
    return (("mlp.gate_proj", width), ("mlp.up_proj", width))


def W(k: int) -> tuple[str, int]:
    """k times the per-expert FFN width (spec.expert_ffn or spec.ffn), as a slice bound."""
    return ("W", k)


@dataclass(frozen=True)
class Stacked:
    """A checkpoint tensor holding one tensor per expert along dim 0 (expert e = index e), each
    further cut and transposed by ``parts``: (inventory suffix with {e}, ops after selecting the
    expert; a slice bound ``W(k)`` is k x the per-expert FFN width)."""

    parts: tuple[tuple[str, tuple[Op, ...]], ...]

    def expand(self, spec: ModelSpec, prefix: str) -> tuple[Piece, ...]:
        w = spec.expert_ffn or spec.ffn
        out = []
        for e in range(spec.experts):
            for suffix, ops in self.parts:
                ops2 = tuple(tuple(w * x[1] if isinstance(x, tuple) and x[0] == "W" else x
                                   for x in op) for op in ops)
                out.append(Piece(prefix + suffix.format(e=e), (("index", 0, e),) + ops2))
        return tuple(out)


_EVEN, _ODD = ("slice", -1, 0, None, 2), ("slice", -1, 1, None, 2)
_HALF0, _HALF1 = ("slice", -1, 0, W(1), 1), ("slice", -1, W(1), W(2), 1)

GPT_OSS_STACKED = {
    # transformers GptOssExperts: gate_up_proj (E, hidden, 2 x ffn), gate = [..., ::2], up =
    # [..., 1::2]; out = x @ W, so each expert's (out, in) weight is the transpose
    "mlp.experts.gate_up_proj": Stacked((("mlp.experts.{e}.gate_proj.weight", (_EVEN, ("T",))),
                                         ("mlp.experts.{e}.up_proj.weight", (_ODD, ("T",))))),
    "mlp.experts.gate_up_proj_bias": Stacked((("mlp.experts.{e}.gate_proj.bias", (_EVEN,)),
                                              ("mlp.experts.{e}.up_proj.bias", (_ODD,)))),
    "mlp.experts.down_proj": Stacked((("mlp.experts.{e}.down_proj.weight", (("T",),)),)),
    "mlp.experts.down_proj_bias": Stacked((("mlp.experts.{e}.down_proj.bias", ()),)),
    # openai/gpt-oss-* MXFP4: blocks (E, out rows, in / 32, 16) bytes, scales (E, out, in / 32);
    # gate_up rows interleaved gate, up (convert_hf_to_gguf GptOssModel splits [:, ::2] / [:, 1::2])
    "mlp.experts.gate_up_proj_blocks": Stacked((
        ("mlp.experts.{e}.gate_proj.weight", (("slice", 0, 0, None, 2), ("mxfp4",))),
        ("mlp.experts.{e}.up_proj.weight", (("slice", 0, 1, None, 2), ("mxfp4",))))),
    "mlp.experts.down_proj_blocks": Stacked((("mlp.experts.{e}.down_proj.weight", (("mxfp4",),)),)),
}
GPT_OSS_SCALES = {
    "mlp.experts.gate_up_proj_scales": Stacked((
        ("mlp.experts.{e}.gate_proj.weight", (("slice", 0, 0, None, 2),)),
        ("mlp.experts.{e}.up_proj.weight", (("slice", 0, 1, None, 2),)))),
    "mlp.experts.down_proj_scales": Stacked((("mlp.experts.{e}.down_proj.weight", ()),)),
}

LLAMA4_STACKED = {
    # transformers Llama4TextExperts: gate_up_proj (E, hidden, 2 x ffn), gate, up = chunk(2, -1)
    "mlp.experts.gate_up_proj": Stacked((("mlp.experts.{e}.gate_proj.weight", (_HALF0, ("T",))),
                                         ("mlp.experts.{e}.up_proj.weight", (_HALF1, ("T",))))),
    "mlp.experts.down_proj": Stacked((("mlp.experts.{e}.down_proj.weight", (("T",),)),)),
}


def _hf_llama(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    return _one(f"model.layers.{i}.{rest}")


_GEMMA_NORMS = {"post_attention_layernorm": "post_self_attn_layernorm",
                "pre_feedforward_layernorm": "post_attention_layernorm",
                "post_feedforward_layernorm": "post_mlp_layernorm"}
"""Gemma 2/3 block norms -> inventory names. Gemma's post_attention_layernorm is AFTER attention
(the inventory's sandwich post_self_attn_layernorm); its pre_feedforward_layernorm is the Llama
layout's pre-FFN post_attention_layernorm."""


def _hf_gemma(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    head, _, kind = rest.partition(".")
    return _one(f"model.layers.{i}.{_GEMMA_NORMS.get(head, head)}.{kind}")


def _hf_mixtral(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    """Mixtral and Phi-3.5-MoE: block_sparse_moe.gate, block_sparse_moe.experts.N.w1 (gate) / w3
    (up) / w2 (down)."""
    w = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
    m = re.match(r"^block_sparse_moe\.experts\.(\d+)\.(w[123])\.(.+)$", rest)
    if m:
        return _one(f"model.layers.{i}.mlp.experts.{m.group(1)}.{w[m.group(2)]}.{m.group(3)}")
    if rest.startswith("block_sparse_moe.gate."):
        return _one(f"model.layers.{i}.mlp.gate.{rest[len('block_sparse_moe.gate.'):]}")
    return _one(f"model.layers.{i}.{rest}")


def _hf_gate_up(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    """A fused mlp.gate_up_proj, rows [gate; up] (chunk(2): gate first): transformers' GLM-4
    (glm, glm4) and Phi-3."""
    p = f"model.layers.{i}."
    m = re.match(r"^mlp\.gate_up_proj\.(weight|bias)$", rest)
    if m:
        return _rows(spec, p, m.group(1), _gate_up_rows(spec.ffn))
    return _one(p + rest)


def _hf_phi3(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    """Phi-3: a fused self_attn.qkv_proj, rows [q; k; v], and the fused gate_up_proj."""
    m = re.match(r"^self_attn\.qkv_proj\.(weight|bias)$", rest)
    if m:
        return _rows(spec, f"model.layers.{i}.", m.group(1), _qkv_rows(spec))
    return _hf_gate_up(spec, i, rest)


def _hf_gpt_oss(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    p = f"model.layers.{i}."
    if rest in GPT_OSS_STACKED:
        return GPT_OSS_STACKED[rest].expand(spec, p)
    if rest in GPT_OSS_SCALES:
        return tuple(Piece(x.target, x.ops, scales=True)
                     for x in GPT_OSS_SCALES[rest].expand(spec, p))
    if rest.startswith("mlp.router."):  # the router is the inventory's mlp.gate
        return _one(p + "mlp.gate." + rest[len("mlp.router."):])
    return _one(p + rest)


def _llama4_rope(spec: ModelSpec, q: bool) -> Op:
    """Llama 4 rotates adjacent pairs of each head (view_as_complex; llama.cpp's NORM rotary):
    its q/k rows, read as rotate-half [evens | odds] per head, give the same scores under the
    rotate-half RoPE every other family uses (q and k permuted alike; the L2 QK-norm and NoPE
    layers do not see the order)."""
    return ("rope_rows", spec.heads if q else spec.kv_heads, spec.head_dim, 0, spec.head_dim)


def _hf_llama4(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    """Llama 4: feed_forward.* (dense layers), feed_forward.router, feed_forward.experts.*
    (stacked), feed_forward.shared_expert.*."""
    p = f"model.layers.{i}."
    if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
        return _one(p + rest, _llama4_rope(spec, rest.startswith("self_attn.q")))
    if rest.startswith("feed_forward."):
        rest = "mlp." + rest[len("feed_forward."):]
        rest = rest.replace("mlp.router.", "mlp.gate.").replace("mlp.shared_expert.",
                                                                 "mlp.shared_experts.")
        if rest in LLAMA4_STACKED:
            return LLAMA4_STACKED[rest].expand(spec, p)
    return _one(p + rest)


def _hf_deepseek(spec: ModelSpec, i: str, rest: str) -> tuple[Piece, ...]:
    """DeepSeek-V2/V3: the inventory's names; the rotary rows are stored interleaved (pairs, the
    reference code's complex multiply; transformers' rope_interleave): read as rotate-half."""
    name, r = f"model.layers.{i}.{rest}", spec.qk_rope_dim
    if rest in ("self_attn.q_b_proj.weight", "self_attn.q_proj.weight"):
        return _one(name, ("rope_rows", spec.heads, spec.q_head_dim, spec.qk_nope_dim, r))
    if rest == "self_attn.kv_a_proj_with_mqa.weight":
        return _one(name, ("rope_rows", 1, spec.kv_lora_rank + r, spec.kv_lora_rank, r))
    return _one(name)


def _hf_opt(spec: ModelSpec, name: str) -> tuple[Piece, ...]:
    n = name.removeprefix("model.decoder.")
    if n.startswith("final_layer_norm."):
        return _one("model.norm." + n[len("final_layer_norm."):])
    m = re.match(r"^layers\.(\d+)\.(.+)$", n)
    if not m:
        return _one("model." + n if name.startswith("model.decoder.") else name)
    rest = m.group(2)
    for theirs, ours in (("self_attn_layer_norm", "input_layernorm"),
                         ("final_layer_norm", "post_attention_layernorm"),
                         ("self_attn.out_proj", "self_attn.o_proj"),
                         ("fc1", "mlp.up_proj"), ("fc2", "mlp.down_proj")):
        if rest.startswith(theirs + "."):
            rest = ours + rest[len(theirs):]
    return _one(f"model.layers.{m.group(1)}.{rest}")


def _hf_gpt2(spec: ModelSpec, name: str) -> tuple[Piece, ...]:
    """GPT-2 (with or without ``transformer.``): Conv1D weights are (in, out); c_attn holds q, k, v
    as column thirds."""
    n = name.removeprefix("transformer.")
    top = {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.embed_positions.weight",
           "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"}
    if n in top:
        return _one(top[n])
    m = re.match(r"^h\.(\d+)\.(.+)$", n)
    if not m:
        return _one(name)
    p, rest, h = f"model.layers.{m.group(1)}.", m.group(2), spec.hidden
    for theirs, ours in (("ln_1.", "input_layernorm."), ("ln_2.", "post_attention_layernorm.")):
        if rest.startswith(theirs):
            return _one(p + ours + rest[len(theirs):])
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        axis = -1 if kind == "weight" else 0
        return tuple(Piece(f"{p}self_attn.{x}_proj.{kind}",
                           (("slice", axis, j * h, (j + 1) * h, 1),)
                           + ((("T",),) if kind == "weight" else ()))
                     for j, x in enumerate("qkv"))
    for theirs, ours in (("attn.c_proj.", "self_attn.o_proj."), ("mlp.c_fc.", "mlp.up_proj."),
                         ("mlp.c_proj.", "mlp.down_proj.")):
        if rest.startswith(theirs):
            kind = rest[len(theirs):]
            return _one(p + ours + kind, *((("T",),) if kind == "weight" else ()))
    return _one(p + rest)


def _hf_falcon_bloom(spec: ModelSpec, name: str) -> tuple[Piece, ...]:
    """HF Falcon (RWForCausalLM / FalconForCausalLM) and BLOOM names, with or without the
    ``transformer.`` prefix. Both fuse q/k/v into ``query_key_value`` as [kv groups, (heads/kv q
    heads, k, v), head_dim]: Falcon's new decoder architecture literally, Falcon-7B's multi-query
    layout (q heads, k, v) as the case kv = 1, BLOOM's per-head (q, k, v) as the case kv = heads."""
    n = name.removeprefix("transformer.")
    top = {"word_embeddings.weight": "model.embed_tokens.weight",
           "word_embeddings_layernorm.weight": "model.embed_layernorm.weight",
           "word_embeddings_layernorm.bias": "model.embed_layernorm.bias",
           "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"}
    if n in top:
        return _one(top[n])
    m = re.match(r"^h\.(\d+)\.(.+)$", n)
    if not m:
        return _one(name)
    p, rest = f"model.layers.{m.group(1)}.", m.group(2)
    qm = re.match(r"^self_attention\.query_key_value\.(weight|bias)$", rest)
    if qm:
        g = spec.heads // spec.kv_heads
        return tuple(Piece(f"{p}self_attn.{x}_proj.{qm.group(1)}",
                           (("fused_qkv", spec.kv_heads, g, spec.head_dim, j),))
                     for j, x in enumerate("qkv"))
    for theirs, ours in (("self_attention.dense.", "self_attn.o_proj."),
                         ("mlp.dense_h_to_4h.", "mlp.up_proj."),
                         ("mlp.dense_4h_to_h.", "mlp.down_proj."),
                         ("ln_attn.", "input_layernorm."),
                         ("ln_mlp.", "post_attention_layernorm.")):
        if rest.startswith(theirs):
            return _one(p + ours + rest[len(theirs):])
    return _one(p + rest)


def _hf_glm130b(spec: ModelSpec, name: str) -> tuple[Piece, ...]:
    """GLM-130B (SwissArmyTransformer) names, for a single-partition checkpoint converted to
    safetensors: query_key_value holds q, k, v as contiguous thirds; dense_h_to_4h holds the GeGLU
    halves [x1; x2] with out = x1 * gelu(x2), so x2 is the gate and x1 the up projection. Not
    checked against a real GLM-130B checkpoint (it ships as model-parallel .pt shards)."""
    top = {"transformer.word_embeddings.weight": "model.embed_tokens.weight",
           "transformer.final_layernorm.weight": "model.norm.weight",
           "transformer.final_layernorm.bias": "model.norm.bias"}
    if name in top:
        return _one(top[name])
    m = re.match(r"^transformer\.layers\.(\d+)\.(.+)$", name)
    if not m:
        return _one(name)
    p, rest = f"model.layers.{m.group(1)}.", m.group(2)
    q, w = spec.heads * spec.head_dim, spec.ffn
    qm = re.match(r"^attention\.query_key_value\.(weight|bias)$", rest)
    if qm:
        return _rows(spec, p, qm.group(1), (("self_attn.q_proj", q), ("self_attn.k_proj", q),
                                            ("self_attn.v_proj", q)))
    qm = re.match(r"^mlp\.dense_h_to_4h\.(weight|bias)$", rest)
    if qm:
        return _rows(spec, p, qm.group(1), (("mlp.up_proj", w), ("mlp.gate_proj", w)))
    for theirs, ours in (("attention.dense.", "self_attn.o_proj."),
                         ("mlp.dense_4h_to_h.", "mlp.down_proj.")):
        if rest.startswith(theirs):
            return _one(p + ours + rest[len(theirs):])
    return _one(p + rest)


_HF_LAYER_RULES = {"llama": _hf_llama, "gemma": _hf_gemma, "mixtral": _hf_mixtral,
                   "phi3": _hf_phi3, "glm4": _hf_gate_up, "gpt_oss": _hf_gpt_oss,
                   "llama4": _hf_llama4, "deepseek": _hf_deepseek}
_HF_WHOLE_RULES = {"opt": _hf_opt, "gpt2": _hf_gpt2, "falcon_bloom": _hf_falcon_bloom,
                   "glm130b": _hf_glm130b}

HF_CONVENTION = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
    "qwen3_moe": "llama", "glm4_moe": "llama", "mistral3": "llama", "generic": "llama",
    "gemma2": "gemma", "gemma3": "gemma", "mixtral": "mixtral", "phimoe": "mixtral",
    "phi3": "phi3", "glm4": "glm4", "gpt_oss": "gpt_oss", "llama4": "llama4",
    "deepseek_v3": "deepseek", "deepseek_v2": "deepseek", "opt": "opt", "gpt2": "gpt2",
    "falcon": "falcon_bloom", "bloom": "falcon_bloom", "glm": "glm130b",
}
"""Family -> its Hugging Face naming convention (the tables above). qwen3_moe and glm4_moe
(GLM-4.5) name experts ``mlp.experts.N.*`` with router ``mlp.gate`` (and GLM-4.5's
``mlp.gate.e_score_correction_bias``, its shared ``mlp.shared_experts.*``) exactly as the
inventory does; glm4 covers transformers' ``glm`` and ``glm4`` model types (GLM-4-9B-0414's
``post_self_attn_layernorm`` / ``post_mlp_layernorm`` are the inventory's names)."""


def _hf_pieces(spec: ModelSpec, name: str) -> tuple[Piece, ...]:
    conv = HF_CONVENTION[spec.family]
    if conv in _HF_WHOLE_RULES:
        return _HF_WHOLE_RULES[conv](spec, name)
    n = _text_name(name, spec.family)
    if n.endswith(".weight_scale_inv"):  # fp8 block scales: bytes of the weight they scale
        return tuple(Piece(p.target, (), scales=True)
                     for p in _hf_pieces(spec, n[:-len("_scale_inv")]))
    m = _LAYER.match(n)
    if m:
        return _HF_LAYER_RULES[conv](spec, m.group(1), m.group(2))
    return _one(n)


# -- GGUF conventions --------------------------------------------------------------------------

GGUF_TOP = {"token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight", "output_norm.bias": "model.norm.bias",
            "output.weight": "lm_head.weight", "output.bias": "lm_head.bias"}

GGUF_LAYER = {
    "attn_norm": "input_layernorm", "attn_norm_2": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj", "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
    "attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm", "attn_kv_b": "self_attn.kv_b_proj",
}
"""GGUF block tensor base names (gguf 0.19.0 TENSOR_NAMES, without ``blk.N.``) -> inventory
names (without ``model.layers.N.``), where every architecture means the same by them."""

GGUF_WHOLE = {"attn_sinks.weight": "self_attn.sinks",
              "exp_probs_b.bias": "mlp.gate.e_score_correction_bias"}
"""GGUF block tensors whose inventory name is not base + .weight / .bias."""

GGUF_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj",
                "ffn_down_exps": "down_proj"}
"""Stacked expert tensors: numpy shape (E, out, in) (and biases (E, out)); expert e is index e of
dim 0, already in the inventory's (out, in) layout."""

GGUF_SANDWICH = {"post_attention_norm": "post_self_attn_layernorm",
                 "post_ffw_norm": "post_mlp_layernorm"}
"""Gemma 2/3 and GLM-4: the norms after attention and after the FFN."""

GGUF_CONVENTION = {
    "llama": "llama", "mistral": "llama", "mixtral": "llama", "mistral3": "llama",
    "qwen2": "plain", "qwen3": "plain", "qwen3_moe": "plain", "llama4": "llama4",
    "phimoe": "phi3", "phi3": "phi3", "gemma2": "gemma", "gemma3": "gemma", "glm4": "glm4",
    "gpt_oss": "post_norm", "glm4_moe": "post_norm", "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek",
}
"""Family -> GGUF convention:

- llama: q/k rows permuted by the converter (LlamaModel.permute), undone on read;
- plain: GGUF_LAYER's names only;
- llama4: q/k rows as in the HF checkpoint (undo_permute = False), read as rotate-half like HF's;
- phi3: fused attn_qkv, and ffn_up = [gate; up] in dense layers;
- gemma: sandwich norms; every norm weight stored as 1 + w (Gemma2Model / Gemma3Model);
- glm4: sandwich norms, ffn_up = [gate; up], attn_qkv when fused;
- post_norm: ``post_attention_norm`` is the pre-FFN norm (gpt-oss, GLM-4.5 list no ffn_norm);
- deepseek: MLA; rope rows interleaved as in the HF checkpoint; kv_b split into attn_k_b
  (heads, rank, nope) and attn_v_b (heads, v, rank)."""


def _gguf_pieces(spec: ModelSpec, name: str) -> tuple[Piece, ...]:
    conv = GGUF_CONVENTION.get(spec.family, "plain")
    gemma = conv == "gemma"
    off = -1.0 if gemma and name.endswith("norm.weight") else 0.0
    if name in GGUF_TOP:
        return _one(GGUF_TOP[name], offset=off)
    m = _BLK.match(name)
    if not m:
        return ()
    i, rest = m.group(1), m.group(2)
    p = f"model.layers.{i}."
    if rest in GGUF_WHOLE:
        return _one(p + GGUF_WHOLE[rest])
    base, _, kind = rest.rpartition(".")
    if kind not in ("weight", "bias"):
        return ()
    if base in GGUF_EXPERTS:
        part = GGUF_EXPERTS[base]
        return tuple(Piece(f"{p}mlp.experts.{e}.{part}.{kind}", (("index", 0, e),))
                     for e in range(spec.experts))
    if conv in ("gemma", "glm4") and base in GGUF_SANDWICH:
        return _one(f"{p}{GGUF_SANDWICH[base]}.{kind}", offset=off)
    if conv == "post_norm" and base == "post_attention_norm":
        return _one(f"{p}post_attention_layernorm.{kind}")
    if conv in ("phi3", "glm4") and base == "attn_qkv":
        return _rows(spec, p, kind, _qkv_rows(spec))
    if conv in ("phi3", "glm4") and base == "ffn_up" and not spec.moe:
        return _rows(spec, p, kind, _gate_up_rows(spec.ffn))
    if conv == "deepseek":
        nope, v, r = spec.qk_nope_dim, spec.v_head_dim, spec.qk_rope_dim
        if base == "attn_k_b":  # (heads, rank, nope): transposed per head
            return (Piece(f"{p}self_attn.kv_b_proj.weight", (("T",),),
                          into=("head_rows", spec.heads, 0, nope)),)
        if base == "attn_v_b":  # (heads, v, rank)
            return (Piece(f"{p}self_attn.kv_b_proj.weight", (),
                          into=("head_rows", spec.heads, nope, nope + v)),)
        if base in ("attn_q_b", "attn_q") and kind == "weight":
            return _one(f"{p}{GGUF_LAYER[base]}.weight",
                        ("rope_rows", spec.heads, spec.q_head_dim, nope, r))
        if base == "attn_kv_a_mqa" and kind == "weight":
            return _one(f"{p}self_attn.kv_a_proj_with_mqa.weight",
                        ("rope_rows", 1, spec.kv_lora_rank + r, spec.kv_lora_rank, r))
    if base not in GGUF_LAYER:
        return ()
    target = f"{p}{GGUF_LAYER[base]}.{kind}"
    if conv == "llama4" and kind == "weight" and base in ("attn_q", "attn_k"):
        return _one(target, _llama4_rope(spec, base == "attn_q"))
    if conv == "llama" and kind == "weight" and base in ("attn_q", "attn_k"):
        return _one(target, ("unpermute", spec.heads if base == "attn_q" else spec.kv_heads))
    return _one(target, offset=off)


# -- entry points ------------------------------------------------------------------------------

def pieces(spec: ModelSpec, name: str, fmt: str) -> tuple[Piece, ...]:
    """The inventory tensors (or parts) checkpoint tensor ``name`` holds, in the naming of
    ``spec.family`` for format ``fmt`` ('gguf' or 'safetensors'). () for a tensor that holds none
    (see :func:`ignored`) or whose name the convention does not know; a target that is not in
    the inventory means the checkpoint holds a tensor the spec does not describe."""
    if ignored(spec, name, fmt):
        return ()
    return _gguf_pieces(spec, name) if fmt == "gguf" else _hf_pieces(spec, name)


def canonical_name(spec: ModelSpec, name: str, fmt: str) -> str | None:
    """The inventory name of a checkpoint tensor that holds exactly one whole inventory tensor."""
    ps = pieces(spec, name, fmt)
    if len(ps) == 1 and not ps[0].into and not ps[0].scales:
        return ps[0].target
    return None
