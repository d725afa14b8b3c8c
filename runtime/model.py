"""A decoder-only transformer built from a ``planner.spec.ModelSpec``, tensor-parallel, with linears held
in a registry weight format through ``kernels``.

The model is built on the meta device; its ``named_parameters()`` at TP 1 are exactly
``planner.spec.inventory(spec)`` (names and (out, in) shapes). :func:`materialize` then replaces one
tensor at a time with real data (deterministic random, or a checkpoint tensor), quantizing linears of
the quantized roles as it goes, so the fp32 model never exists at once.

Every transient tensor of the forward pass is written to be predictable: norms through the fused
``F.rms_norm`` / ``F.layer_norm``, RoPE and activations in place, residual adds in place, logits only
for the last position with a vocab-parallel argmax (no gathered logits). ``planner.memory``'s
``runtime`` activation model (planner/activations.py) mirrors this file step by step; change both
together.

There is no family list: every structural difference is a ModelSpec feature field built by the
one generic block (``check_buildable`` refuses what is not, by name). Built: RMSNorm / LayerNorm
(Gemma's (1 + w) stored as such), SwiGLU / GeGLU / plain MLPs, RoPE or NoPE per layer, learned
positions, ALiBi, GQA/MQA, biases on q/k/v/o, MLP, experts, router and LM head, per-head QK-norm
(RMS with weights, weightless L2), sequential, parallel (one or two norms) and sandwich-normed
blocks, full, sliding-window and chunked attention (the windowed layers' KV cache a ring buffer of
the window), attention softcapping and sinks (explicit scores), final-logit softcapping, embedding
scale, MoE with softmax / softmax-over-top-k / sigmoid routing, interleaved and dense-only layers
and shared experts, MLA (with or without a query LoRA). See runtime/NOTES.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from planner.precision import QUANTIZED_ROLES
from planner.spec import ModelSpec

NOT_BUILT_FEATURES = {"vision": "a vision tower"}
"""Spec features the runtime does not build yet (field -> what it is); a spec that sets one is
refused by name. Everything else is built by the one generic block below. The vision tower of a
multimodal checkpoint is neither allocated nor run: its text model alone would be planned and
measured against a prediction that counts the tower, so such a spec is refused."""
_FEATURE_DEFAULTS = {"moe_step": 1}


class RuntimeError_(Exception):
    """A user-facing runtime error (one line; exit 2)."""


def unbuilt_features(spec: ModelSpec) -> list[str]:
    """The spec's features (field names) that the runtime does not build."""
    return [f for f in NOT_BUILT_FEATURES
            if getattr(spec, f) and getattr(spec, f) != _FEATURE_DEFAULTS.get(f)]


def check_buildable(spec: ModelSpec, context: int, pp: int = 1) -> None:
    """Raise RuntimeError_ naming why the runtime cannot build this spec."""
    if spec.tensors:
        raise RuntimeError_(f"{spec.name}: a generic spec (an architecture known only to "
                            "transformers) is planned, not built by the runtime; export it to "
                            "an engine instead")
    missing = unbuilt_features(spec)
    if missing:
        f = missing[0]
        raise RuntimeError_(f"{spec.name}: the runtime does not build {NOT_BUILT_FEATURES[f]} "
                            f"({f}) yet")
    if spec.mla and any(spec.window_of(i) for i in range(spec.layers)):
        raise RuntimeError_(f"{spec.name}: MLA with sliding or chunked layers is not built")
    if spec.alibi and any(spec.window_of(i) for i in range(spec.layers)):
        raise RuntimeError_(f"{spec.name}: ALiBi with sliding or chunked layers is not built")
    if spec.tied_embeddings and spec.lm_head_bias:
        raise RuntimeError_(f"{spec.name}: an LM-head bias with tied embeddings is not built")
    if spec.sandwich_norms and spec.parallel_attn:
        raise RuntimeError_(f"{spec.name}: sandwich norms in a parallel block are not built")
    if (spec.attn_softcap or spec.attn_sinks) and spec.alibi:
        raise RuntimeError_(f"{spec.name}: ALiBi with softcapping or sinks is not built")
    if spec.mla and spec.v_head_dim > spec.q_head_dim:
        raise RuntimeError_(f"{spec.name}: MLA with v_head_dim {spec.v_head_dim} above the query "
                            f"head dim {spec.q_head_dim} is not built")
    if spec.mla and spec.qk_rope_dim % 2:
        raise RuntimeError_(f"{spec.name}: an odd qk_rope_dim ({spec.qk_rope_dim}) is not built")
    if spec.alibi and spec.rope_theta:
        raise RuntimeError_(f"{spec.name}: ALiBi and RoPE together are not built")
    if pp != 1:
        raise RuntimeError_(f"pipeline parallelism (PP {pp}) is not built in the runtime; use TP")


@dataclass(frozen=True)
class Layout:
    """Where this process sits: TP rank and degree, formats and dtypes."""

    tp: int = 1
    rank: int = 0
    weights: str = "fp16"
    """Registry key of quantized-role linears."""
    quantize_lm_head: bool = False
    act_dtype: torch.dtype = torch.float16
    """Activation dtype (embeddings, norms, biases, routers too)."""
    group: object = None
    """torch.distributed process group (None = TP 1)."""


def padded_vocab(vocab: int, tp: int) -> int:
    """planner.memory.padded_vocab for the runtime profile (multiple of TP)."""
    return -(-vocab // tp) * tp


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    return max(1, spec.kv_heads // tp)


def _all_reduce(x: torch.Tensor, lay: Layout) -> None:
    if lay.tp > 1:
        import torch.distributed as dist
        # async + wait + drop the Work: a synchronous call leaves the Work (and its reference to
        # x) to be collected later, which kept one extra [T, h] tensor alive on some ranks
        before = x._use_count()
        work = dist.all_reduce(x, group=lay.group, async_op=True)
        work.wait()
        del work
        # gloo's worker thread drops its reference to x a moment after wait() returns; until it
        # does, a later free of x is delayed and one extra [T, h] tensor can be alive at the next
        # peak on some ranks (measured). Wait for that reference to go: bounded by wall time, not
        # by a count of yields, so a loaded machine (CI, other ranks busy) gets the same result.
        deadline = time.monotonic() + 5.0
        while x._use_count() > before and time.monotonic() < deadline:
            time.sleep(0.0001)


# -- modules -----------------------------------------------------------------------------------

class Linear(nn.Module):
    """A linear shard: ``weight`` (out, in) as a Parameter on meta; after materialization either a
    Parameter in the activation dtype (unquantized formats) or the buffers of a PackedWeight."""

    def __init__(self, out_f: int, in_f: int, bias: bool, split: str, role: str, lay: Layout):
        super().__init__()
        self.out_f, self.in_f, self.split, self.role = out_f, in_f, split, role
        self.weight = nn.Parameter(torch.empty(out_f, in_f, device="meta"), requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_f, device="meta"), requires_grad=False)
                     if bias else None)
        self.packed: kernels.PackedWeight | None = None
        quantized = role in QUANTIZED_ROLES or (role == "lm_head" and lay.quantize_lm_head)
        self.key = lay.weights if quantized else _float_key(lay.act_dtype)
        self.lay = lay

    def set_weight(self, w: torch.Tensor) -> None:
        """Store a [out, in] shard (any float dtype) in this linear's format."""
        packed = kernels.quantize(w.contiguous(), self.key)
        del self.weight
        for name, buf in packed.buffers.items():
            self.register_buffer(f"w_{name}", buf)
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = self.split == "row"
        bias = None if (row or self.bias is None) else self.bias
        y = kernels.matmul(x, self.packed, bias)
        if row:
            _all_reduce(y, self.lay)
            if self.bias is not None:
                y.add_(self.bias)
        return y


def _float_key(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dt]


class Norm(nn.Module):
    def __init__(self, h: int, kind: str, eps: float):
        super().__init__()
        self.kind, self.eps, self.h = kind, eps, h
        self.weight = nn.Parameter(torch.empty(h, device="meta"), requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(h, device="meta"), requires_grad=False)
                     if kind == "layernorm" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (self.h,), self.weight, self.bias, self.eps)
        return F.rms_norm(x, (self.h,), self.weight, self.eps)


class Embedding(nn.Module):
    """Vocab-parallel embedding: rank r holds rows [r * V/t, (r+1) * V/t) of the padded vocab."""

    def __init__(self, rows: int, h: int, lay: Layout):
        super().__init__()
        self.rows, self.lay = rows, lay
        self.weight = nn.Parameter(torch.empty(rows, h, device="meta"), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.lay.tp == 1:
            return F.embedding(ids, self.weight)
        lo = self.lay.rank * self.rows
        local = ids - lo
        outside = (local < 0) | (local >= self.rows)
        local.masked_fill_(outside, 0)
        x = F.embedding(local, self.weight)
        x.masked_fill_(outside.unsqueeze(-1), 0)
        del local, outside
        _all_reduce(x, self.lay)
        return x


def alibi_slopes(n: int) -> list[float]:
    """ALiBi head slopes (BLOOM's build_alibi_tensor / the ALiBi paper, n not a power of 2 too)."""
    p2 = 2 ** math.floor(math.log2(n))
    base = 2.0 ** (-(2.0 ** -(math.log2(p2) - 3)))
    slopes = [base ** i for i in range(1, p2 + 1)]
    if p2 != n:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * p2) - 3)))
        slopes += [extra ** i for i in range(1, 1 + 2 * min(p2, n - p2), 2)]
    return slopes


def window_mask(kind: str, window: int, pos: int, s: int, n: int, dtype: torch.dtype,
                device=None) -> torch.Tensor:
    """The additive mask [s, n] in ``dtype`` for queries pos..pos+s-1 over keys 0..n-1: 0 where key
    j is visible to query i, -inf elsewhere. Causal (j <= i), and for ``sliding`` i - j < window
    (transformers' sliding_window_overlay: the query and the window - 1 tokens before it), for
    ``chunked`` j // window == i // window (Llama 4: the current attention_chunk only). Built per
    layer right before attention; its transients (int64 positions [s, 1] and [n], a bool [s, n]
    and one more bool [s, n] for the window test) are modelled in planner/activations.py."""
    i = torch.arange(pos, pos + s, device=device).unsqueeze(1)
    j = torch.arange(n, device=device)
    bad = j > i
    if kind == "sliding":
        bad.logical_or_(j <= i - window)
    elif kind == "chunked":
        bad.logical_or_(j // window != i // window)
    del i, j
    mask = torch.zeros(s, n, dtype=dtype, device=device)
    mask.masked_fill_(bad, float("-inf"))
    return mask


class Attention(nn.Module):
    """Multi-head attention of layer ``i``: GQA projections (optional biases), the per-head QK-norm
    (``rms``: a (head_dim,) weight each, before RoPE, Qwen3 / Gemma 3; ``l2``: weightless, after
    RoPE on RoPE layers only, Llama 4), RoPE unless the layer is NoPE, the layer's attention kind
    (full; sliding and chunked layers keep a ring buffer of their window in the cache), and either
    fused SDPA or, with score softcapping (Gemma 2) or sinks (gpt-oss), an explicit score matrix."""

    def __init__(self, spec: ModelSpec, lay: Layout, i: int = 0):
        super().__init__()
        t = lay.tp
        hd, h = spec.head_dim, spec.hidden
        self.heads = spec.heads // t
        self.kv = kv_heads_per_rank(spec, t)
        self.hd = hd
        self.q_proj = Linear(self.heads * hd, h, spec.qkv_bias, "column", "linear", lay)
        self.k_proj = Linear(self.kv * hd, h, spec.qkv_bias, "kv", "linear", lay)
        self.v_proj = Linear(self.kv * hd, h, spec.qkv_bias, "kv", "linear", lay)
        self.o_proj = Linear(h, self.heads * hd, spec.o_bias, "row", "linear", lay)
        if spec.qk_norm == "rms":
            self.q_norm = Norm(hd, "rmsnorm", spec.norm_eps)
            self.k_norm = Norm(hd, "rmsnorm", spec.norm_eps)
        self.rms_qk = spec.qk_norm == "rms"
        self.l2_qk = spec.qk_norm == "l2" and spec.uses_rope(i)
        self.eps = spec.norm_eps
        self.use_rope = spec.uses_rope(i)
        self.kind, self.window = spec.layer_kind(i), spec.window_of(i)
        self.softcap = spec.attn_softcap
        # gpt-oss: one learned sink logit per query head (this rank's heads)
        self.sinks = (nn.Parameter(torch.empty(self.heads, device="meta"), requires_grad=False)
                      if spec.attn_sinks else None)
        # ALiBi: this rank's heads' slopes (python floats: no parameter, no buffer)
        self.slopes = (alibi_slopes(spec.heads)[lay.rank * self.heads:(lay.rank + 1) * self.heads]
                       if spec.alibi else None)

    @property
    def eager(self) -> bool:
        """Scores are materialized: SDPA can neither softcap them nor add a sink column."""
        return bool(self.softcap) or self.sinks is not None

    def forward(self, x: torch.Tensor, layer: int, cache: "KVCache", pos: int,
                rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.hd)
        k = self.k_proj(x).view(b, s, self.kv, self.hd)
        v = self.v_proj(x).view(b, s, self.kv, self.hd)
        if self.rms_qk:  # Qwen3 / Gemma 3: RMSNorm over each head's vector, before RoPE
            q = self.q_norm(q)
            k = self.k_norm(k)
        if rope is not None and self.use_rope:
            _rope_(q, *rope)
            _rope_(k, *rope)
        if self.l2_qk:  # Llama 4: weightless RMS ("L2") norm after RoPE
            q = F.rms_norm(q, (self.hd,), None, self.eps)
            k = F.rms_norm(k, (self.hd,), None, self.eps)
        cache.write(layer, pos, k, v)
        n = pos + s
        mask = None
        if self.window and s > 1 and n > self.window:
            # a prompt longer than the window: the ring buffer keeps only the last window tokens,
            # so this step attends over its own K and V with the layer's mask
            if pos:
                raise RuntimeError_("a multi-token step after the prompt on a sliding/chunked "
                                    "layer is not built")
            kc, vc = k.transpose(1, 2), v.transpose(1, 2)
            if self.eager:
                kc, vc = kc.contiguous(), vc.contiguous()
            del k, v
            mask = window_mask(self.kind, self.window, pos, s, n, q.dtype, q.device)
        else:
            del k, v
            if self.window:  # the visible tokens are a prefix of the ring buffer
                n = (min(n, cache.capacity(layer)) if self.kind == "sliding" else
                     pos + s - (pos + s - 1) // self.window * self.window)
            kc, vc = cache.read(layer, n, q.dtype)
            if self.eager and s > 1:
                mask = window_mask("full", 0, pos, s, n, q.dtype, q.device)
        if self.slopes is not None:
            mask = self.alibi(pos, s, q.dtype, q.device)
        if self.eager:
            o = self._eager(q, kc, vc, mask)
            del q, kc, vc, mask
        else:
            m4 = None if mask is None or self.slopes is not None else mask.view(1, 1, *mask.shape)
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), kc, vc, attn_mask=mask if m4 is None else m4,
                is_causal=(mask is None and pos == 0 and s > 1),
                enable_gqa=self.kv != self.heads)
            del q, kc, vc, mask, m4
        o = o.transpose(1, 2)
        if not o.is_contiguous():
            o = o.contiguous()
        return self.o_proj(o.view(b, s, self.heads * self.hd))

    def _eager(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(cap·tanh(q·kᵀ/√d / cap) + mask [, sink]) · v, as transformers' eager attention of
        Gemma 2 and gpt-oss: scores in the activation dtype, softmax in fp32 (over the sink column
        too, which is then dropped), probabilities cast back. GQA without repeating K/V: the query
        heads of one KV head are stacked along the rows. q [b, s, heads, hd]; kc, vc [b, kv, n,
        hd]; returns [b, heads, s, hd]."""
        b, s, H, hd = q.shape
        kv, n = self.kv, kc.shape[2]
        g = H // kv
        qg = q.transpose(1, 2).contiguous().view(b, kv, g * s, hd)  # a copy unless s == 1
        scores = torch.matmul(qg, kc.transpose(-1, -2))  # [b, kv, g*s, n]
        del qg
        if self.softcap:
            scores.mul_(1.0 / (math.sqrt(hd) * self.softcap)).tanh_().mul_(self.softcap)
        else:
            scores.mul_(1.0 / math.sqrt(hd))
        if mask is not None:
            scores.view(b, kv, g, s, n).add_(mask)
        if self.sinks is not None:
            sink = self.sinks.to(scores.dtype).view(1, kv, g, 1, 1).expand(b, kv, g, s, 1)
            cat = torch.cat([scores.view(b, kv, g, s, n), sink], dim=-1)
            del scores, sink
            probs = torch.softmax(cat, dim=-1, dtype=torch.float32)
            del cat
            p = probs[..., :n].to(q.dtype).view(b, kv, g * s, n)
        else:
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
            del scores
            p = probs.to(q.dtype)
        del probs
        o = torch.matmul(p, vc)  # [b, kv, g*s, hd] = [b, heads, s, hd]
        del p
        return o.view(b, H, s, hd)

    def alibi(self, pos: int, s: int, dtype: torch.dtype, device=None) -> torch.Tensor:
        """The SDPA float mask [1, heads_r, s, pos + s] in ``dtype``: slope * (j - i) for key j at or
        before query i, -inf after (causal). Built per layer and forward right before SDPA; its
        transients (fp32 positions, fp32 [s, n] distances, a bool [s, n], the slopes) are modelled in
        planner.memory. 4-D, because a 3-D mask sends the CPU SDPA to the math path ([b, h, s, n]
        scores)."""
        n = pos + s
        kpos = torch.arange(n, dtype=torch.float32, device=device)
        qpos = torch.arange(pos, n, dtype=torch.float32, device=device)
        rel = kpos - qpos.unsqueeze(1)  # j - i, [s, n]
        del kpos, qpos
        rel.masked_fill_(rel > 0, float("-inf"))
        mask = torch.empty(1, self.heads, s, n, dtype=dtype, device=device)
        mask.copy_(rel)
        del rel
        mask.mul_(torch.tensor(self.slopes, dtype=dtype, device=device).view(1, -1, 1, 1))
        return mask


class MLAttention(nn.Module):
    """DeepSeek-V2/V3 multi-head latent attention, naive form. q: x -> q_a_proj (replicated) ->
    q_a_layernorm -> q_b_proj (column: this rank's heads), [nope | rope] per head. kv: x ->
    kv_a_proj_with_mqa (replicated) -> [latent | k_rope]; the normed latent and the rotated k_rope
    are cached (one vector of kv_lora_rank + qk_rope_dim per token, the same on every TP rank). At
    attention time the cached latent is expanded by kv_b_proj (column) into this rank's heads'
    k_nope and v; k_rope is shared by every head. SDPA runs with q/k of nope + rope and v padded to
    that width (the CPU flash kernel needs equal head dims; unequal ones take the math path, which
    materializes the scores), scale 1/sqrt(nope + rope); the padding is sliced off before o_proj."""

    def __init__(self, spec: ModelSpec, lay: Layout):
        super().__init__()
        t, h = lay.tp, spec.hidden
        self.heads = spec.heads // t
        self.nope, self.rope_d, self.vd = spec.qk_nope_dim, spec.qk_rope_dim, spec.v_head_dim
        self.qd = self.nope + self.rope_d
        self.lora = spec.kv_lora_rank
        if spec.q_lora_rank:
            self.q_a_proj = Linear(spec.q_lora_rank, h, False, "replicated", "linear", lay)
            self.q_a_layernorm = Norm(spec.q_lora_rank, "rmsnorm", spec.norm_eps)
            self.q_b_proj = Linear(self.heads * self.qd, spec.q_lora_rank, False, "column",
                                   "linear", lay)
        else:
            self.q_proj = Linear(self.heads * self.qd, h, False, "column", "linear", lay)
        self.kv_a_proj_with_mqa = Linear(self.lora + self.rope_d, h, False, "replicated",
                                         "linear", lay)
        self.kv_a_layernorm = Norm(self.lora, "rmsnorm", spec.norm_eps)
        self.kv_b_proj = Linear(self.heads * (self.nope + self.vd), self.lora, False, "column",
                                "linear", lay)
        self.o_proj = Linear(h, self.heads * self.vd, False, "row", "linear", lay)
        self.q_lora = spec.q_lora_rank

    def forward(self, x: torch.Tensor, layer: int, cache: "KVCache", pos: int,
                rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, s, _ = x.shape
        H, nope, qd, L = self.heads, self.nope, self.qd, self.lora
        if self.q_lora:
            qa = self.q_a_proj(x)
            qn = self.q_a_layernorm(qa)
            del qa
            q = self.q_b_proj(qn).view(b, s, H, qd)
            del qn
        else:
            q = self.q_proj(x).view(b, s, H, qd)
        kva = self.kv_a_proj_with_mqa(x)  # [b, s, L + rope]
        c = self.kv_a_layernorm(kva[..., :L])  # a new [b, s, L]
        k_pe = kva[..., L:].unsqueeze(2)  # [b, s, 1, rope] view
        if rope is not None:
            _rope_(q[..., nope:], *rope)
            _rope_(k_pe, *rope)
        cache.write_latent(layer, pos, c, k_pe.squeeze(2))
        del c, k_pe, kva
        n = pos + s
        lat, pe = cache.read_latent(layer, n, q.dtype)  # [b, n, L] contiguous, [b, n, rope]
        kv = self.kv_b_proj(lat).view(b, n, H, nope + self.vd)
        del lat
        k = torch.empty(b, H, n, qd, dtype=q.dtype, device=q.device)
        k[..., :nope].copy_(kv[..., :nope].transpose(1, 2))
        k[..., nope:].copy_(pe.unsqueeze(1))
        del pe
        v = kv[..., nope:].transpose(1, 2)
        if self.vd < qd:
            v = F.pad(v, (0, qd - self.vd))
        del kv
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v,
                                           is_causal=(pos == 0 and s > 1))
        del q, k, v
        o = o.transpose(1, 2)
        if self.vd < qd or not o.is_contiguous():
            o = o[..., :self.vd].contiguous()
        return self.o_proj(o.view(b, s, H * self.vd))


def _rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate x [b, s, heads, hd] in place (HF rotate_half convention); one half-size temporary."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    t = x1 * sin
    x1.mul_(cos).addcmul_(x2, sin, value=-1)
    x2.mul_(cos).add_(t)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, width: int, role: str, lay: Layout,
                 bias: bool | None = None):
        super().__init__()
        h, t = spec.hidden, lay.tp
        bias = spec.mlp_bias if bias is None else bias
        self.gated, self.act = spec.gated_ffn, spec.activation
        self.approx = spec.gelu_approx
        if self.gated:
            self.gate_proj = Linear(width // t, h, bias, "column", role, lay)
        self.up_proj = Linear(width // t, h, bias, "column", role, lay)
        self.down_proj = Linear(h, width // t, bias, "row", role, lay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            g = self.gate_proj(x)
            u = self.up_proj(x)
            _act_(g, self.act, self.approx)
            g.mul_(u)
            del u
        else:
            g = self.up_proj(x)
            _act_(g, self.act, self.approx)
        return self.down_proj(g)


def _act_(x: torch.Tensor, kind: str, approximate: str = "tanh") -> None:
    if kind == "silu":
        F.silu(x, inplace=True)
    elif kind == "relu":
        F.relu_(x)
    else:
        torch.ops.aten.gelu_(x, approximate=approximate)


class Router(Linear):
    """The MoE gate: a replicated linear [E, h] in the activation dtype (with an ordinary bias for
    gpt-oss), and for DeepSeek-V3 / GLM-4.5 an fp32 ``e_score_correction_bias`` [E] (inventory
    dtype fp32, kept fp32 by set_tensor)."""

    FP32 = ("e_score_correction_bias",)

    def __init__(self, experts: int, h: int, bias: bool, lay: Layout, linear_bias: bool = False):
        super().__init__(experts, h, linear_bias, "replicated", "router", lay)
        self.e_score_correction_bias = (
            nn.Parameter(torch.empty(experts, device="meta"), requires_grad=False)
            if bias else None)


class MoE(nn.Module):
    """Top-k routed experts. Every expert runs on every token of the step, one expert at a time,
    and its output is added with the routing weight (zero for tokens not routed to it): the memory
    peak is then the planner's worst case (one expert's FFN on all tokens) whatever the routing."""

    def __init__(self, spec: ModelSpec, lay: Layout):
        super().__init__()
        self.k = spec.experts_per_token
        self.n = spec.experts
        self.routing = spec.routing
        self.gate = Router(spec.experts, spec.hidden, spec.router_bias, lay,
                           spec.router_linear_bias)
        width = spec.expert_ffn or spec.ffn
        self.experts = nn.ModuleList(MLP(spec, width, "expert", lay,
                                         spec.mlp_bias or spec.expert_bias)
                                     for _ in range(spec.experts))
        self.shared_experts = (MLP(spec, spec.shared_width, "linear", lay)
                               if spec.shared_experts else None)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [.., k] fp32, expert ids [.., k]). ``softmax`` (Mixtral, Qwen3-MoE, PhiMoE,
        DeepSeek-V2): softmax over every expert, top-k. ``softmax_topk`` (gpt-oss): top-k of the
        logits, softmax over those k. ``sigmoid`` (DeepSeek-V3, Llama 4): sigmoid scores; the top-k
        is chosen on scores + e_score_correction_bias and the weights are the chosen experts'
        scores. The caller normalizes the k weights to sum 1 (group-limited routing,
        routed_scaling_factor, norm_topk_prob and Llama 4's scaling of the expert input are not in
        the spec; none changes a tensor's size)."""
        logits = self.gate(x)
        if self.routing == "softmax":
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            del logits
            w, idx = torch.topk(probs, self.k, dim=-1)
            del probs
            return w, idx
        if self.routing == "softmax_topk":
            top, idx = torch.topk(logits, self.k, dim=-1)
            del logits
            w = torch.softmax(top, dim=-1, dtype=torch.float32)
            del top
            return w, idx
        scores = logits.float()
        del logits
        scores.sigmoid_()
        bias = self.gate.e_score_correction_bias
        if bias is not None:
            choice = scores + bias
            _, idx = torch.topk(choice, self.k, dim=-1)
            del choice
        else:
            _, idx = torch.topk(scores, self.k, dim=-1)
        w = scores.gather(-1, idx)
        del scores
        return w, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, idx = self.route(x)
        w /= w.sum(dim=-1, keepdim=True)
        dense = torch.zeros(*x.shape[:-1], self.n, dtype=x.dtype, device=x.device)
        dense.scatter_(-1, idx, w.to(x.dtype))
        del w, idx
        # the shared expert's output is the accumulator (no separate zeros [T, h])
        out = self.shared_experts(x) if self.shared_experts is not None else torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            y = expert(x)
            out.addcmul_(y, dense[..., e:e + 1])
            del y
        return out


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, i: int, lay: Layout):
        super().__init__()
        self.input_layernorm = Norm(spec.hidden, spec.norm, spec.norm_eps)
        self.self_attn = MLAttention(spec, lay) if spec.mla else Attention(spec, lay, i)
        self.parallel = spec.parallel_attn
        if not self.parallel or spec.parallel_norms == 2:
            # Falcon-40B/180B: ln_attn = input_layernorm, ln_mlp = post_attention_layernorm
            self.post_attention_layernorm = Norm(spec.hidden, spec.norm, spec.norm_eps)
        else:
            self.post_attention_layernorm = None
        self.mlp = MoE(spec, lay) if spec.is_moe_layer(i) else MLP(spec, spec.ffn, "linear", lay)
        if spec.sandwich_norms:  # Gemma 2/3, GLM-4: a norm on each sub-block's output too
            self.post_self_attn_layernorm = Norm(spec.hidden, spec.norm, spec.norm_eps)
            self.post_mlp_layernorm = Norm(spec.hidden, spec.norm, spec.norm_eps)
        self.sandwich = spec.sandwich_norms
        self.i = i

    def forward(self, h: torch.Tensor, cache, pos, rope) -> None:
        """Updates the residual stream ``h`` in place."""
        if not self.parallel:
            a = self.self_attn(self.input_layernorm(h), self.i, cache, pos, rope)
            if self.sandwich:
                a = self.post_self_attn_layernorm(a)
            h.add_(a)
            del a
            m = self.mlp(self.post_attention_layernorm(h))
            if self.sandwich:
                m = self.post_mlp_layernorm(m)
            h.add_(m)
        elif self.post_attention_layernorm is None:
            # parallel, one shared norm: the MLP reads x, not h, so the attention output can go
            # into h at once (no extra [T, h] held while the MLP runs)
            x = self.input_layernorm(h)
            a = self.self_attn(x, self.i, cache, pos, rope)
            h.add_(a)
            del a
            m = self.mlp(x)
            del x
            h.add_(m)
        else:
            # parallel, two norms: ln_mlp reads the block's input h, so the attention output is
            # held (one [T, h]) until the MLP is done
            a = self.self_attn(self.input_layernorm(h), self.i, cache, pos, rope)
            m = self.mlp(self.post_attention_layernorm(h))
            h.add_(a)
            del a
            h.add_(m)


class Inner(nn.Module):
    def __init__(self, spec: ModelSpec, lay: Layout):
        super().__init__()
        vp = padded_vocab(spec.vocab, lay.tp)
        self.embed_tokens = Embedding(vp // lay.tp, spec.hidden, lay)
        if spec.learned_positions:
            self.embed_positions = nn.Parameter(
                torch.empty(spec.learned_positions, spec.hidden, device="meta"), requires_grad=False)
        if spec.embed_norm:
            self.embed_layernorm = Norm(spec.hidden, spec.norm, spec.norm_eps)
        self.layers = nn.ModuleList(Block(spec, i, lay) for i in range(spec.layers))
        self.norm = Norm(spec.hidden, spec.norm, spec.norm_eps)


class Model(nn.Module):
    """The whole model on one TP rank."""

    def __init__(self, spec: ModelSpec, lay: Layout):
        super().__init__()
        self.spec, self.lay = spec, lay
        self.model = Inner(spec, lay)
        vp = padded_vocab(spec.vocab, lay.tp)
        self.vocab_rows = vp // lay.tp
        if not spec.tied_embeddings:
            self.lm_head = Linear(self.vocab_rows, spec.hidden, spec.lm_head_bias, "vocab",
                                  "lm_head", lay)

    # Inventory-named parameters (meta), for the materializer.
    def named_tensors(self):
        for name, p in self.named_parameters():
            if name == "model.embed_positions":
                name = "model.embed_positions.weight"
            yield name, p

    def rope(self, pos: int, s: int, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos, sin [s, 1, hd/2] for positions pos..pos+s-1 in the activation dtype."""
        spec = self.spec
        if not spec.rope_theta:
            return None
        hd = spec.qk_rope_dim if spec.mla else spec.head_dim
        inv = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(pos, pos + s, dtype=torch.float32), inv)
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        del ang, inv
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def embed(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """The residual stream [b, s, h] entering the first block: token embedding, learned
        positions (OPT/GPT-2), the embedding LayerNorm (BLOOM)."""
        spec, m = self.spec, self.model
        s = ids.shape[1]
        h = m.embed_tokens(ids)
        if spec.learned_positions:
            p = torch.arange(pos + spec.position_offset, pos + spec.position_offset + s,
                             device=ids.device)
            h.add_(F.embedding(p, m.embed_positions))
            del p
        if spec.embed_scale:  # Gemma: sqrt(hidden), rounded to the activation dtype as HF does
            h.mul_(torch.tensor(math.sqrt(spec.hidden), dtype=h.dtype).item())
        if spec.embed_norm:
            x = m.embed_layernorm(h)
            del h
            h = x
        return h

    def forward(self, ids: torch.Tensor, cache: "KVCache", pos: int) -> torch.Tensor:
        """ids [b, s] -> greedy next token ids [b] (int64)."""
        spec, m = self.spec, self.model
        b, s = ids.shape
        rope = self.rope(pos, s, self.lay.act_dtype)
        if rope is not None and ids.device.type != "cpu":
            rope = tuple(r.to(ids.device) for r in rope)
        h = self.embed(ids, pos)
        for block in m.layers:
            block(h, cache, pos, rope)
        del rope
        last = h[:, -1, :].contiguous() if s > 1 else h.view(b, spec.hidden)
        del h
        x = m.norm(last)
        del last
        logits = self._lm_head(x)
        del x
        return self._argmax(logits)

    def _lm_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normed hidden states in the activation dtype (the LM-head bias inside the
        matmul)."""
        if self.spec.tied_embeddings:
            return F.linear(x, self.model.embed_tokens.weight)
        return self.lm_head(x)

    def _softcap_(self, lf: torch.Tensor) -> torch.Tensor:
        """Gemma 2's final softcap cap·tanh(logits / cap), in place on the fp32 logits."""
        cap = self.spec.final_softcap
        if cap:
            lf.div_(cap).tanh_().mul_(cap)
        return lf

    def head_raw(self, last: torch.Tensor) -> torch.Tensor:
        """Logits [rows, this rank's vocab rows] in the activation dtype of final hidden states
        [rows, h]: final norm, LM head and its bias, before the final softcap; for evaluation."""
        return self._lm_head(self.model.norm(last))

    def capped(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw logits as the greedy step sees them: a new fp32 tensor, final softcap applied."""
        return self._softcap_(raw.to(torch.float32, copy=True))

    def head_logits(self, last: torch.Tensor) -> torch.Tensor:
        """fp32 logits [rows, this rank's vocab rows] of final hidden states [rows, h] as the
        greedy step sees them (final norm, LM head and its bias, final softcap); for evaluation."""
        return self.capped(self.head_raw(last))

    def _argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy token over the vocab-parallel logits: local fp32 max, then one small all-gather."""
        lay = self.lay
        lf = self._softcap_(logits.float())
        del logits
        valid = self.spec.vocab - lay.rank * self.vocab_rows
        if valid < self.vocab_rows:
            lf[:, max(valid, 0):] = float("-inf")
        val, idx = lf.max(dim=-1)
        del lf
        idx += lay.rank * self.vocab_rows
        if lay.tp == 1:
            return idx
        import torch.distributed as dist
        vals = [torch.empty_like(val) for _ in range(lay.tp)]
        idxs = [torch.empty_like(idx) for _ in range(lay.tp)]
        dist.all_gather(vals, val, group=lay.group)
        dist.all_gather(idxs, idx, group=lay.group)
        best = torch.stack(vals).argmax(dim=0)
        return torch.stack(idxs).gather(0, best.unsqueeze(0)).squeeze(0)


# -- KV cache ----------------------------------------------------------------------------------

_KV_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class KVCache:
    """K and V of every layer in the KV format (fp16/bf16; fp8 e4m3; int8 with an fp16 scale per
    token per head; int4 two per byte with an fp16 scale), allocated up front. Layers are grouped
    by how many tokens they hold: full layers the whole context, sliding and chunked layers a ring
    buffer of min(context, window) tokens (token p in slot p % capacity). One allocation per
    group, [layers, 2, b, kv_heads_rank, tokens, hd]; ``data``/``scale`` are the first group's
    (the only one when no layer is windowed). Bytes = planner's ``kv_cache`` line exactly."""

    def __init__(self, spec: ModelSpec, fmt: str, tp: int, batch: int, tokens: int,
                 device: torch.device):
        self.fmt = fmt
        L, kv, hd = spec.layers, kv_heads_per_rank(spec, tp), spec.head_dim
        self.mla = spec.mla
        if spec.mla:
            # MLA: one vector per token per layer, [normed latent | rotated k_rope], the same on
            # every TP rank; quantized formats take one scale per vector
            hd = spec.kv_lora_rank + spec.qk_rope_dim
            self.lora = spec.kv_lora_rank
        if fmt not in _KV_DTYPES and fmt not in ("fp8", "int8", "int4"):
            raise RuntimeError_(f"KV-cache format {fmt!r} is not built")
        self.hd = hd
        caps = [min(tokens, spec.window_of(i)) if spec.window_of(i) else tokens for i in range(L)]
        self.caps = caps
        self.ring = [bool(spec.window_of(i)) for i in range(L)]
        order = sorted(set(caps), key=caps.index)  # groups in order of first appearance
        self._loc = [(order.index(c), sum(1 for x in caps[:i] if x == c))
                     for i, c in enumerate(caps)]
        self._data: list[torch.Tensor] = []
        self._scale: list[torch.Tensor | None] = []
        for c in order:
            n = caps.count(c)
            shape = (n, batch, c) if spec.mla else (n, 2, batch, kv, c)
            if fmt in _KV_DTYPES:
                d, sc = torch.zeros(*shape, hd, dtype=_KV_DTYPES[fmt], device=device), None
            elif fmt == "fp8":
                d, sc = torch.zeros(*shape, hd, dtype=torch.float8_e4m3fn, device=device), None
            elif fmt == "int8":
                d = torch.zeros(*shape, hd, dtype=torch.int8, device=device)
                sc = torch.zeros(*shape, dtype=torch.float16, device=device)
            else:
                d = torch.zeros(*shape, (hd + 1) // 2, dtype=torch.uint8, device=device)
                sc = torch.zeros(*shape, dtype=torch.float16, device=device)
            self._data.append(d)
            self._scale.append(sc)

    @property
    def data(self) -> torch.Tensor:
        return self._data[0]

    @data.setter
    def data(self, t: torch.Tensor) -> None:
        self._data[0] = t

    @property
    def scale(self) -> torch.Tensor | None:
        return self._scale[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self._data, *self._scale) if t is not None]

    def capacity(self, layer: int) -> int:
        """Tokens layer ``layer`` holds per sequence."""
        return self.caps[layer]

    def _at(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        g, li = self._loc[layer]
        sc = self._scale[g]
        return self._data[g][li], (None if sc is None else sc[li])

    def _segments(self, layer: int, pos: int, s: int) -> list[tuple[int, int, int]]:
        """(first source token, end, first slot) of the contiguous runs tokens pos..pos+s-1 go to:
        one run on a full layer; on a ring buffer only the last ``capacity`` tokens, split where
        the slots wrap."""
        if not self.ring[layer]:
            return [(0, s, pos)]
        cap = self.caps[layer]
        start = max(pos, pos + s - cap)
        out = []
        while start < pos + s:
            slot = start % cap
            end = min(pos + s, start + cap - slot)
            out.append((start - pos, end - pos, slot))
            start = end
        return out

    def write(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [b, s, kv, hd] -> the cache slots of positions pos..pos+s."""
        data, scale = self._at(layer)
        for lo, hi, slot in self._segments(layer, pos, k.shape[1]):
            for j, x in enumerate((k, v)):
                dst = data[j, :, :, slot:slot + hi - lo]
                xt = x[:, lo:hi].transpose(1, 2)  # [b, kv, s, hd] view
                if scale is None:
                    dst.copy_(xt)
                    continue
                self._quantize_into(dst, scale[j, :, :, slot:slot + hi - lo], xt)

    def _quantize_into(self, dst: torch.Tensor, scale_dst: torch.Tensor, x: torch.Tensor) -> None:
        """int8 / int4 cache entries: a symmetric scale per vector (last dim) into ``scale_dst``,
        the values into ``dst`` (int4: two per byte, low nibble first, stored q + 8)."""
        qmax = 127 if self.fmt == "int8" else 7
        sc = x.abs().amax(dim=-1).float().div_(qmax).clamp_(min=2.0 ** -24)
        scale_dst.copy_(sc)
        q = (x.float() / sc.unsqueeze(-1)).round_().clamp_(-qmax, qmax)
        del sc, x  # the caller passes a temporary (MLA) or a view: this drops the last reference
        if self.fmt == "int8":
            dst.copy_(q)
        else:
            q += 8
            u = q.to(torch.uint8)
            if self.hd % 2:
                u = F.pad(u, (0, 1))
            dst.copy_(u[..., 0::2] | (u[..., 1::2] << 4))
            del u
        del q

    def write_latent(self, layer: int, pos: int, c: torch.Tensor, k_pe: torch.Tensor) -> None:
        """MLA: c [b, s, lora] and k_pe [b, s, rope] -> positions pos..pos+s of one layer."""
        s = c.shape[1]
        data, scale = self._at(layer)
        dst = data[:, pos:pos + s]
        if scale is None:
            dst[..., :self.lora].copy_(c)
            dst[..., self.lora:].copy_(k_pe)
            return
        # quantized formats: one scale over the whole vector (latent and rope key together)
        self._quantize_into(dst, scale[:, pos:pos + s], torch.cat([c, k_pe], dim=-1))

    def read_latent(self, layer: int, n: int,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """MLA: (latent [b, n, lora] as a new contiguous tensor in ``dtype`` (kv_b_proj's input),
        k_rope [b, n, rope]: a view of the cache when it needs no dequantization)."""
        data, scale = self._at(layer)
        d = data[:, :n]
        L = self.lora
        if scale is None:
            lat = torch.empty(*d.shape[:-1], L, dtype=dtype, device=d.device)
            lat.copy_(d[..., :L])
            return lat, d[..., L:]
        sc = scale[:, :n].unsqueeze(-1).to(dtype)
        if self.fmt == "int8":
            x = d.to(dtype)
        else:
            x = torch.stack(((d & 0xF), (d >> 4)), dim=-1).flatten(-2)[..., :self.hd]
            x = x.to(dtype).sub_(8)
        x.mul_(sc)
        del sc
        lat = x[..., :L].contiguous()
        return lat, x[..., L:]

    def read(self, layer: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [b, kv, n, hd] of the first n slots in ``dtype``: views when the cache already
        is that dtype, else dequantized copies (transient)."""
        data, scale = self._at(layer)
        out = []
        for j in (0, 1):
            d = data[j, :, :, :n]
            if scale is None:
                out.append(d if d.dtype == dtype else d.to(dtype))
                continue
            sc = scale[j, :, :, :n].unsqueeze(-1).to(dtype)
            if self.fmt == "int8":
                x = d.to(dtype)
            else:
                x = torch.stack(((d & 0xF), (d >> 4)), dim=-1).flatten(-2)[..., :self.hd]
                x = x.to(dtype).sub_(8)
            out.append(x.mul_(sc))
        return out[0], out[1]


# -- construction ------------------------------------------------------------------------------

def build(spec: ModelSpec, lay: Layout) -> Model:
    """The model on the meta device (no allocation)."""
    with torch.device("meta"):
        return Model(spec, lay)


def meta_inventory(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the TP-1 model's parameters, built on meta (for the inventory check)."""
    m = build(spec, Layout())
    return {name: tuple(p.shape) for name, p in m.named_tensors()}


def shard_of(t, full: torch.Tensor, spec: ModelSpec, lay: Layout) -> torch.Tensor:
    """This rank's shard of an inventory tensor (full = the whole tensor) as the planner splits it."""
    tp, r = lay.tp, lay.rank
    if tp == 1 or t.split == "replicated" or (t.split == "row" and full.dim() == 1):
        return full
    if t.split == "column":
        n = full.shape[0] // tp
        return full[r * n:(r + 1) * n]
    if t.split == "row":
        n = full.shape[1] // tp
        return full[:, r * n:(r + 1) * n]
    if t.split == "kv":
        kv = spec.kv_heads
        per = kv_heads_per_rank(spec, tp) * spec.head_dim
        if kv >= tp:
            return full[r * per:(r + 1) * per]
        head = r * kv // tp  # ranks r share KV head r // (tp / kv)
        return full[head * spec.head_dim:(head + 1) * spec.head_dim]
    if t.split == "vocab":
        rows = padded_vocab(spec.vocab, tp) // tp
        part = full[r * rows:(r + 1) * rows]
        if part.shape[0] < rows:
            part = torch.cat([part, part.new_zeros(rows - part.shape[0], *part.shape[1:])])
        return part
    raise ValueError(t.split)


def module_for(model: Model, name: str):
    """(module, attribute) holding inventory tensor ``name``."""
    if name == "model.embed_positions.weight":
        return model.model, "embed_positions"
    path, attr = name.rsplit(".", 1)
    return model.get_submodule(path), attr


def set_tensor(model: Model, name: str, shard: torch.Tensor) -> None:
    """Store one materialized shard: linears quantize, the rest become act-dtype Parameters."""
    mod, attr = module_for(model, name)
    if isinstance(mod, Linear) and attr == "weight":
        mod.set_weight(shard)
        return
    dt = torch.float32 if attr in getattr(mod, "FP32", ()) else model.lay.act_dtype
    expected = tuple(getattr(mod, attr).shape)
    if tuple(shard.shape) != expected:
        raise RuntimeError_(f"{name}: shape {tuple(shard.shape)} does not match {expected}")
    if model.spec.norm_offset and isinstance(mod, Norm) and attr == "weight":
        shard = shard.float() + 1.0  # Gemma applies norm weights as (1 + w): stored so, same bytes
    # requires_grad stays True: MemTracker hooks every parameter (grad is disabled globally)
    setattr(mod, attr, nn.Parameter(shard.to(dt).clone()))


def move_to(model: "nn.Module", device: torch.device) -> "nn.Module":
    """Move a materialized model to ``device``, packed quantized weights included (their buffers
    live on the PackedWeight objects and are re-exposed as ``w_<name>`` attributes)."""
    if device.type == "cpu":
        return model
    model.to(device)
    for mod in model.modules():
        if getattr(mod, "packed", None) is not None:
            mod.packed = mod.packed.to(device)
            for name, buf in mod.packed.buffers.items():
                setattr(mod, f"w_{name}", buf)
    return model
