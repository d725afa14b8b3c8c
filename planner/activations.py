"""The runtime's own activation model: one forward step of ``runtime/model.py``, allocation by
allocation.

``planner launch`` measures what the runtime allocates (runtime/NOTES.md). runtime/model.py is
written so that every transient is known; :func:`runtime_activation_peak` walks one forward step
of it moment by moment (the live transient tensors at each allocation that can be a peak) and
returns the largest. Change the two together: every temporary the runtime creates has a line here.

Layers differ (full / sliding / chunked attention, RoPE or NoPE, dense or MoE FFN): each distinct
attention layer and each distinct FFN is walked once; the residual stream and the RoPE tables are
the only tensors live across sub-blocks, so the step's peak is the largest moment of any of them.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field

from planner.precision import QUANTIZED_ROLES, KVFormat, WeightFormat
from planner.spec import ModelSpec

_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def runtime_act_key(weights: str, kv_cache: str, device: str) -> str:
    """Activation dtype of the runtime: fp32 plans compute in fp32; on the CPU bf16 (fp16 matmuls
    without AVX512-FP16 run ~800x slower); on CUDA bf16 if weights or KV are bf16, else fp16."""
    if weights == "fp32":
        return "fp32"
    if device == "cpu":
        return "bf16"
    return "bf16" if "bf16" in (weights, kv_cache) else "fp16"


def _fp32_dequant(fmt_key: str, n: int, k: int, group: int) -> int:
    """Peak bytes of kernels.quant.dequantize(packed) of an [n, k] weight, the fp32 result
    included (it is computed in fp32 on every device, then cast).

    - int8 / llm-int8 / fp8 / absmax: ``qweight.float()`` and its product with the scale (an fp32
      copy [n] of an fp16 scale for int8; fp32 scales are used as they are): 8 bytes per weight.
    - int4, int4-gN: the unpacked nibbles, ``u.float()``, ``u - 8`` and ``(u - 8) * s`` live
      together (12 bytes per weight) with the fp32 scales [n, G]; -zp formats hold the fp32 zero
      points [n, G] too (the nibbles' uint8 unpack is freed by then).
    - nf4: the int64 code indices (8 bytes per weight), the code lookup, the block absmax repeated
      over its 64 elements and their product (4 each), with the first-level absmax [B] and the
      second-level scales repeated over their 256 blocks."""
    e = n * k
    if fmt_key in ("int8", "llm-int8", "fp8", "absmax"):
        return 8 * e + (4 * n if fmt_key == "int8" else 0)
    if fmt_key == "nf4":
        blocks = -(-e // 64)
        return 16 * e + 4 * 64 * blocks + 4 * blocks + 4 * 256 * -(-blocks // 256)
    groups = k // group if group else 1  # int4 formats
    return 12 * e + (8 if fmt_key.endswith("-zp") else 4) * n * groups


def _llm_int8_split(T: int, k: int, a: int) -> tuple[int, int]:
    """kernels.reference.llm_int8_split of x [T, k]: (its peak, the bytes it returns). The outlier
    column test (|x| [T, k] in x's dtype, the bool test, the [k] bool ``cols``), then ``rest`` (x in
    fp32 with outlier columns zeroed), its row absmax and ``sx`` ([T] fp32), and at the peak
    ``rest / sx`` and its rounding next to ``rest`` (12 bytes per element); it returns xq (int8
    [T, k]) and sx; the outlier indices (int32, 4 bytes per outlier column) are not counted (see
    runtime/NOTES.md, "Weight formats")."""
    return max(a * T * k + T * k, 12 * T * k + k + 8 * T), T * k + 4 * T


def _linear_call(fmt_key: str, quantized: bool, act_key: str, device: str, T: int, n: int, k: int,
                 bias: bool, group: int, a: int, outliers: int = 0) -> dict[str, int]:
    """Peak bytes a kernels.matmul call allocates for x [T, k], W [n, k], by part: ``out`` (the
    result), ``dequant_scratch`` (a dequantized / cast copy of W, or its fp32 reference dequant
    buffers), ``kernel_tmp`` (other transients of the kernel at its peak). Follows kernels/api.py's
    dispatch (``kernel_for``) for every registry format on each device.

    ``outliers``: llm-int8's outlier columns of x (|x| > 6 in any row). The walk takes none, as
    the runtime measures with its random weights; on the CPU reference a call with outlier
    columns has one more moment (see below), on CUDA the fused kernel none."""
    out = T * n * a
    if not quantized:
        cast = n * k * a if fmt_key != act_key else 0  # w.to(x.dtype) in kernels' torch-linear
        return {"out": out, "dequant_scratch": cast}
    if fmt_key == "llm-int8":
        split, held = _llm_int8_split(T, k, a)
        if device != "cpu":  # triton-llm-int8: the split, then the fused kernel writes out
            return {"out": out, "kernel_tmp": max(split, held + out) - out}
        # reference-llm-int8 (kernels/reference.py), in fp64: xq and sx from the split (and the
        # int32 outlier indices) and the weight's scale as fp64 [n] are held throughout;
        # xq.double(), wq.double() and their product; the two scale products; with outlier
        # columns their product added (y, the indices as int64, the product and its scaled
        # copy: 24 bytes per output element, above the main product's moment when
        # 16·T·n > 8·n·k + 8·T·k, i.e. a long prefill); the bias; the cast to x's dtype.
        held += 8 * n + 4 * outliers
        peak = max(split, held + 8 * T * k + 8 * n * k + 8 * T * n,
                   held + 16 * T * n + 8 * T,
                   held + 8 * outliers + 24 * T * n if outliers else 0,
                   held + 16 * T * n + 8 * n if bias else 0, held + 8 * T * n + out)
        return {"out": out, "kernel_tmp": peak - out}
    if device == "cpu":
        if fmt_key == "int8":  # torch._weight_int8pack_mm; fp16 scales cast to x's dtype
            # during the mm; y + bias afterwards (the scale copy is gone by then)
            return {"out": out, "kernel_tmp": max(n * a if act_key != "fp16" else 0,
                                                   out if bias else 0)}
        # every other format: the fp32 reference (kernels/reference.py): dequantize, then x in
        # fp32 [T, k] @ w^T -> y fp32 [T, n] (+ the bias in fp32 as a new y), cast to x's dtype
        deq = _fp32_dequant(fmt_key, n, k, group)
        x32 = 4 * T * k if a != 4 else 0
        mm = 4 * n * k + x32 + 4 * T * n
        if bias:
            mm = max(mm, 4 * n * k + 8 * T * n + (4 * n if a != 4 else 0))
        peak = max(deq, mm, 4 * n * k + 4 * T * n + (out if a != 4 else 0))
        return {"out": out, "dequant_scratch": peak - out}
    if fmt_key in ("int8", "int4") or fmt_key.startswith("int4-g"):
        if T <= 16:  # split-K GEMV: fp32 partials [T, n] (+= the bias as fp32 [n]), the cast
            return {"out": out, "kernel_tmp": 4 * T * n + (max(0, 4 * n - out) if bias else 0)}
        return {"out": out}  # GEMM: bias and cast in the epilogue
    # fp8, nf4, absmax: torch-dequant-mm, dequantize in fp32 (nf4 also copies its two code tables
    # to the device), cast to x's dtype, then F.linear (the bias inside the matmul)
    deq = _fp32_dequant(fmt_key, n, k, group) + (4 * 256 + 4 * 16 if fmt_key == "nf4" else 0)
    peak = max(deq, 4 * n * k + a * n * k, a * n * k + out)
    return {"out": out, "dequant_scratch": peak - out}


@dataclass
class _Walk:
    """The step being walked: its shapes, the dtype's bytes ``a``, and the largest moment so far."""

    spec: ModelSpec
    fmt: WeightFormat
    kvf: KVFormat
    device: str
    quantize_lm_head: bool
    tp: int
    T: int
    """Query tokens of the step (all sequences)."""
    seqs: int
    s_q: int
    s_kv: int
    """Tokens a full layer attends to (the cache after this step's write)."""
    act_key: str = ""
    a: int = 0
    best: tuple[int, dict[str, int]] = field(default_factory=lambda: (0, {}))
    moments: dict[str, int] = field(default_factory=dict)
    """Every named moment's live transient bytes (the largest over the layer variants walked)."""

    def __post_init__(self) -> None:
        self.act_key = runtime_act_key(self.fmt.key, self.kvf.key, self.device)
        self.a = _DTYPE_BYTES[self.act_key]

    def lin(self, n: int, k: int, bias: bool, role: str = "linear", rows: int = 0) -> dict[str, int]:
        fmt = self.fmt
        q = fmt.quantized and (role in QUANTIZED_ROLES or (role == "lm_head"
                                                           and self.quantize_lm_head))
        key = fmt.key if (role in QUANTIZED_ROLES or q) else self.act_key
        group = fmt.group if fmt.granularity == "group" else 0
        return _linear_call(key, q, self.act_key, self.device, rows or self.T, n, k, bias, group,
                            self.a)

    def at(self, event: str, parts: dict) -> None:
        """One moment of the step: the live transients, a linear call's parts as a dict."""
        flat: dict[str, int] = {}
        for k, v in parts.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    key = ("dequant_scratch" if kk == "dequant_scratch" else
                           f"{event}.{k}" if kk == "out" else f"{event}.{k}_{kk}")
                    flat[key] = flat.get(key, 0) + vv
            else:
                flat[f"{event}.{k}"] = v
        total = sum(flat.values())
        self.moments[event] = max(self.moments.get(event, 0), total)
        if total > self.best[0]:
            self.best = (total, {k: v for k, v in flat.items() if v})

    def rms_of(self, width: int, rows: int = 0, weight: bool = True) -> int:
        """F.rms_norm's transients over ``rows`` vectors of ``width``. CUDA has a fused kernel
        (output + fp32 rstd per row); on the CPU it decomposes into x.float() (free for fp32),
        x.pow(2), its mean and rsqrt (fp32 [rows] each, held with the pow), x * rstd, * weight,
        then the cast back: with a weight three fp32 copies and rstd at its peak; without one
        (Llama 4's L2 norm) the fp32 copy, the pow, the mean and the rsqrt."""
        rows = rows or self.T
        if self.device != "cpu":
            return rows * width * self.a + 4 * rows
        up = 0 if self.a == 4 else 4  # x.float()
        if weight:
            return rows * width * (up + 8) + 4 * rows
        return rows * width * (up + 4) + 8 * rows

    def up(self, elements: int) -> int:
        """Bytes of an fp32 copy of an activation-dtype tensor (none when that is fp32)."""
        return 0 if self.a == 4 else 4 * elements

    def norm_of(self, width: int) -> int:
        """The block norm's transients (F.layer_norm: the output and its mean and rstd, [T] each
        in the input dtype on the CPU, fp32 on CUDA)."""
        if self.spec.norm == "layernorm":
            return self.T * width * self.a + 2 * self.T * (self.a if self.device == "cpu" else 4)
        return self.rms_of(width)

    def mask(self, live: dict, kind: str, n: int) -> dict[str, int]:
        """runtime/model.py window_mask for s_q queries over n keys: int64 positions [s_q, 1] and
        [n], the bool [s_q, n] of hidden keys, for a window test one more int64 vector and bool
        [s_q, n]; then the additive mask [s_q, n] in the activation dtype (returned: it stays
        live through attention)."""
        s, a = self.s_q, self.a
        pos = {"mask_i": 8 * s, "mask_j": 8 * n, "mask_bool": s * n}
        if kind == "sliding":
            self.at("attn.mask_window", {**live, **pos, "mask_i_minus_w": 8 * s,
                                         "mask_test": s * n})
        elif kind == "chunked":
            self.at("attn.mask_window", {**live, **pos, "mask_j_chunk": 8 * n,
                                         "mask_i_chunk": 8 * s, "mask_test": s * n})
        else:
            self.at("attn.mask_causal", {**live, **pos})
        m = {"mask": s * n * a}
        self.at("attn.mask", {**live, "mask_bool": s * n, **m})
        return m


def runtime_activation_peak(spec: ModelSpec, fmt: WeightFormat, kvf: KVFormat, device: str,
                            quantize_lm_head: bool, tp: int, T: int, seqs: int, s_q: int,
                            s_kv: int, vocab_pad: int, has_lm_head: bool,
                            has_layers: bool) -> tuple[int, dict[str, int]]:
    """Peak transient bytes of one forward step of the runtime on one rank, and its parts.

    Memoised: a search evaluates the same stage shape for many candidates (identical stages,
    capacity probes); callers get their own copy of the parts."""
    w = _walk(spec, fmt, kvf, device, quantize_lm_head, tp, T, seqs, s_q, s_kv, vocab_pad,
              has_lm_head, has_layers)
    return w.best[0], dict(w.best[1])


MOMENT_GROUPS = ("attention", "mlp", "norm", "lm_head")
"""The sub-blocks a moment belongs to, as the runtime measures them (runtime/measure.py: the
peak inside each module of that kind)."""


def moment_group(event: str) -> str | None:
    """The sub-block (MOMENT_GROUPS) of a walk moment, or None for one outside every module the
    runtime times (the embedding, the fp32 logits of the greedy step)."""
    if event.endswith("post_norm") or event in ("norm", "ln_mlp"):
        return "norm"
    if event.startswith("attn."):
        return "attention"
    if event.startswith(("mlp.", "moe.")):
        return "mlp"
    if event == "lm_head.logits":
        return "lm_head"
    return None


def runtime_phases(spec: ModelSpec, fmt: WeightFormat, kvf: KVFormat, device: str,
                   quantize_lm_head: bool, tp: int, batch: int, prompt_tokens: int,
                   new_tokens: int, vocab_pad: int,
                   decode_s_kv: int = 0) -> dict[str, dict[str, int]]:
    """The runtime's phases as ``planner.memory.estimate`` walks them (one pipeline stage):
    ``prefill`` (the whole prompt of every sequence in one step) and, with new tokens,
    ``decode`` (one token per sequence over the cache at its fullest: prompt + new tokens, or
    ``decode_s_kv``). Phase -> {"peak": bytes, and per MOMENT_GROUPS group the largest moment of
    that sub-block}."""
    steps = {"prefill": (batch * prompt_tokens, batch, prompt_tokens, prompt_tokens)}
    if new_tokens:
        steps["decode"] = (batch, batch, 1, decode_s_kv or prompt_tokens + new_tokens)
    out: dict[str, dict[str, int]] = {}
    for name, (T, seqs, s_q, s_kv) in steps.items():
        w = _walk(spec, fmt, kvf, device, quantize_lm_head, tp, T, seqs, s_q, s_kv, vocab_pad,
                  True, spec.layers > 0)
        ph = {"peak": w.best[0]}
        for event, b in w.moments.items():
            g = moment_group(event)
            if g:
                ph[g] = max(ph.get(g, 0), b)
        out[name] = ph
    return out


@functools.lru_cache(maxsize=8192)
def _walk(spec: ModelSpec, fmt: WeightFormat, kvf: KVFormat, device: str,
          quantize_lm_head: bool, tp: int, T: int, seqs: int, s_q: int, s_kv: int,
          vocab_pad: int, has_lm_head: bool, has_layers: bool) -> "_Walk":
    w = _Walk(spec, fmt, kvf, device, quantize_lm_head, tp, T, seqs, s_q, s_kv)
    a, h = w.a, spec.hidden
    H = T * h * a
    rope_d = spec.qk_rope_dim if spec.mla else spec.head_dim  # MLA: RoPE on the rope part only
    R = s_q * rope_d * a if (has_layers and spec.rope_theta) else 0  # cos, sin [s_q, rope_d/2]
    if has_layers and spec.embed_norm:  # BLOOM: LayerNorm of the token embedding (a new tensor)
        w.at("embed_norm", {"rope": R, "embedding": H, "norm": w.norm_of(h)})
    if has_layers:
        if spec.norm == "rmsnorm":
            w.at("norm", {"residual": H, "rope": R, "rms_norm": w.rms_of(h)})
        base = {"residual": H, "rope": R, "normed": H}
        if spec.mla:
            _mla_attention(w, base)
        else:
            variants = {(spec.layer_kind(i), spec.window_of(i), spec.uses_rope(i))
                        for i in range(spec.layers)}
            for kind, window, rope in sorted(variants):
                _attention(w, base, kind, window, rope)
        if spec.sandwich_norms:  # the attention output normed before the residual add
            w.at("attn.post_norm", {"residual": H, "rope": R, "attn_out": H,
                                    "norm": w.norm_of(h)})
        # parallel attention with two norms (Falcon-40B/180B): ln_mlp reads the block input, so
        # the attention output [T, h] is held through the MLP. One shared norm: the MLP reads the
        # same normed x and the attention output goes into the residual at once (no extra).
        held: dict[str, int] = {}
        if spec.parallel_attn and spec.parallel_norms == 2:
            held = {"attn_block_out": H}
            w.at("ln_mlp", {"residual": H, "rope": R, **held, "norm": w.norm_of(h)})
        dense = spec.layers - spec.moe_layer_count()
        if dense:
            _mlp(w, base, "mlp", spec.ffn // tp, "linear", spec.mlp_bias, held)
        if spec.moe_layer_count():
            _moe(w, base, held)
        if spec.sandwich_norms:
            w.at("mlp.post_norm", {"residual": H, "rope": R, "mlp_out": H, "norm": w.norm_of(h)})
    if has_lm_head:
        vr = vocab_pad // tp
        x = seqs * h * a
        logits: dict[str, int] | int = seqs * vr * a
        if not spec.tied_embeddings:
            # the LM head sees one row per sequence; lin() uses T rows
            logits = w.lin(vr, h, spec.lm_head_bias, "lm_head", rows=seqs)
        w.at("lm_head.logits", {"last_normed": x, "logits": logits})
        # the final softcap is applied in place on the fp32 copy
        w.at("lm_head.fp32", {"logits": seqs * vr * a, "logits_fp32": seqs * vr * 4})
    return w


def _attention(w: _Walk, base: dict, kind: str, window: int, rope: bool) -> None:
    """runtime/model.py Attention for one kind of layer: q/k/v projections, the QK-norm, RoPE,
    the KV write (the ring buffer keeps the last window tokens), then either the cached K/V (a
    prefix of the ring on a windowed layer) or, for a prompt longer than the window, the step's
    own K/V with the layer's mask; fused SDPA, or explicit scores with softcapping or sinks."""
    spec, kvf, a, T, seqs, s_q = w.spec, w.kvf, w.a, w.T, w.seqs, w.s_q
    h, hd = spec.hidden, spec.head_dim
    heads_r = spec.heads // w.tp
    kv_r = max(1, spec.kv_heads // w.tp)
    Q, K = T * heads_r * hd * a, T * kv_r * hd * a
    w.at("attn.q_proj", {**base, "q_proj": w.lin(heads_r * hd, h, spec.qkv_bias)})
    w.at("attn.k_proj", {**base, "q": Q, "k_proj": w.lin(kv_r * hd, h, spec.qkv_bias)})
    w.at("attn.v_proj", {**base, "q": Q, "k": K, "v_proj": w.lin(kv_r * hd, h, spec.qkv_bias)})
    qkv = {"q": Q, "k": K, "v": K}
    if spec.qk_norm == "rms":  # F.rms_norm over each head's vector: q, then k, replaced
        w.at("attn.q_norm", {**base, **qkv, "rms_norm": w.rms_of(hd, T * heads_r)})
        w.at("attn.k_norm", {**base, **qkv, "rms_norm": w.rms_of(hd, T * kv_r)})
    if rope and spec.rope_theta:
        w.at("attn.rope", {**base, **qkv, "rope_tmp": Q // 2})
    if spec.qk_norm == "l2" and rope:  # weightless, after RoPE
        w.at("attn.q_l2", {**base, **qkv, "rms_norm": w.rms_of(hd, T * heads_r, weight=False)})
        w.at("attn.k_l2", {**base, **qkv, "rms_norm": w.rms_of(hd, T * kv_r, weight=False)})
    # tokens written: a ring buffer takes only the last window (in at most two runs)
    written = min(s_q, window) if window else s_q
    el = seqs * kv_r * written * hd  # elements of K (or V) written this step, largest run
    if kvf.scale_bytes or kvf.key == "fp8":
        w.at("attn.kv_write", {**base, **qkv, "abs": el * a, "quant_fp32": 8 * el})
    eager = bool(spec.attn_softcap) or spec.attn_sinks
    long_prompt = bool(window) and s_q > 1 and w.s_kv > window
    mask: dict[str, int] = {}
    if long_prompt:  # the step's own K and V, [b, kv, s, hd] views (copies for the eager path)
        n = w.s_kv
        kv_live = {"k": K, "v": K}
        if eager:
            w.at("attn.k_contig", {**base, "q": Q, **kv_live, "kc": K})
            w.at("attn.v_contig", {**base, "q": Q, **kv_live, "kc": K, "vc": K})
            kv_live = {"kc": K, "vc": K}
        mask = w.mask({**base, "q": Q, **kv_live}, kind, n)
    else:
        n = min(w.s_kv, window) if window else w.s_kv
        n_kv = seqs * kv_r * n  # cached vectors read (per K or V)
        kv_live = {} if kvf.key == w.act_key else {"kv_k": n_kv * hd * a, "kv_v": n_kv * hd * a}
        # KVCache.read, K then V: the scale cast to the activation dtype [.., n, 1]; int4 the low
        # and high nibbles, their stack [.., n, hd] (u8), its cast. Each scale lives until the
        # next one replaces it; nothing but K and V outlives the read.
        sc = n_kv * a
        if kvf.key == "int4":
            half = n_kv * ((hd + 1) // 2)
            live_k = {**base, "q": Q, "kv_k": n_kv * hd * a}
            w.at("attn.kv_unpack", {**live_k, "kv_scale": sc, "kv_nibbles": 2 * half,
                                    "kv_stack": n_kv * hd})
            w.at("attn.kv_read", {**live_k, "kv_scale": sc, "kv_stack": n_kv * hd,
                                  "kv_v": n_kv * hd * a})
        elif kvf.scale_bytes:
            w.at("attn.kv_read", {**base, "q": Q, "kv_k": n_kv * hd * a, "kv_scales": 2 * sc})
            w.at("attn.kv_read_v", {**base, "q": Q, **kv_live, "kv_scale": sc})
        if eager and s_q > 1:
            mask = w.mask({**base, "q": Q, **kv_live}, "full", n)
    live = {**base, "q": Q, **kv_live, **mask}
    if spec.alibi:
        # runtime/model.py Attention.alibi, per layer right before SDPA: fp32 key/query positions
        # and distances [s_q, s_kv], a bool causal test, then the mask [1, heads_r, s_q, s_kv] in
        # the activation dtype and the slopes
        rel = s_q * n * 4
        w.at("attn.alibi_pos", {**live, "kpos": n * 4, "qpos": s_q * 4, "alibi_rel": rel})
        w.at("attn.alibi_causal", {**live, "alibi_rel": rel, "causal_bool": s_q * n})
        am = {"alibi_mask": heads_r * s_q * n * a}
        w.at("attn.alibi_mask", {**live, "alibi_rel": rel, **am})
        w.at("attn.alibi_slopes", {**live, **am, "slopes": heads_r * a})
        live = {**live, **am}
    if eager:
        # Attention._eager: the query heads stacked per KV head (a copy unless s_q == 1), scores
        # [b, kv, g*s_q, n] in the activation dtype (softcap, scale and mask in place), the sink
        # column concatenated, an fp32 softmax, the probabilities cast back, · V
        qg = {"q_heads": Q} if s_q > 1 else {}
        if qg:
            w.at("attn.q_heads", {**live, **qg})
        S = seqs * heads_r * s_q * n
        w.at("attn.scores", {**live, **qg, "scores": S * a})
        # torch.softmax(x, dtype=float32) first casts x to fp32 (a copy held during the softmax)
        if spec.attn_sinks:
            S1 = seqs * heads_r * s_q * (n + 1)
            w.at("attn.sink_cat", {**live, "scores": S * a, "with_sinks": S1 * a})
            w.at("attn.softmax", {**live, "with_sinks": S1 * a, "softmax_in": w.up(S1),
                                  "probs_fp32": S1 * 4})
            w.at("attn.probs", {**live, "probs_fp32": S1 * 4, "probs": S * a})
        else:
            w.at("attn.softmax", {**live, "scores": S * a, "softmax_in": w.up(S),
                                  "probs_fp32": S * 4})
            w.at("attn.probs", {**live, "probs_fp32": S * 4, "probs": S * a if a != 4 else 0})
        w.at("attn.pv", {**live, "probs": S * a, "out": Q})
        if s_q > 1:  # [b, heads, s, hd] -> [b, s, heads, hd]
            w.at("attn.o_transpose", {**base, "out": Q, "attn_out": Q})
    else:
        lse = seqs * heads_r * s_q * 4 if w.device == "cpu" else 0
        w.at("attn.sdpa", {**live, "out": Q, "logsumexp": lse})
    # row-parallel: the bias is added in place after the all-reduce, not inside the matmul
    w.at("attn.o_proj", {**base, "attn_out": Q, "o_proj": w.lin(h, heads_r * hd, False)})


def _mlp(w: _Walk, base: dict, prefix: str, width: int, role: str, bias: bool,
         extra: dict[str, int]) -> None:
    """runtime/model.py MLP: gate and up (biases inside the matmul), the activation and the gate ·
    up product in place, down (its bias added in place after the all-reduce)."""
    spec, h = w.spec, w.spec.hidden
    F_ = w.T * width * w.a
    if spec.gated_ffn:
        w.at(f"{prefix}.gate_proj", {**base, **extra, "gate_proj": w.lin(width, h, bias, role)})
        w.at(f"{prefix}.up_proj", {**base, **extra, "gate": F_,
                                   "up_proj": w.lin(width, h, bias, role)})
    else:
        w.at(f"{prefix}.up_proj", {**base, **extra, "up_proj": w.lin(width, h, bias, role)})
    w.at(f"{prefix}.down_proj", {**base, **extra, "act": F_,
                                 "down_proj": w.lin(h, width, False, role)})


def _moe(w: _Walk, base: dict, held: dict) -> None:
    """runtime/model.py MoE: the router linear (its bias inside the matmul), the routing (softmax
    then top-k; top-k then softmax; fp32 sigmoid scores, + the correction bias for the choice,
    gathered), the k weights normalized, the dense [T, E] weights; the shared expert's output is
    the accumulator (else a zeros [T, h]) the routed experts (every one on every token) add into."""
    spec, T, a, tp = w.spec, w.T, w.a, w.tp
    E, k = spec.experts, spec.experts_per_token
    H = T * spec.hidden * a
    b = {**base, **held}
    w.at("moe.gate", {**b, "gate": w.lin(E, spec.hidden, spec.router_linear_bias, "router")})
    logits, wk, ids = T * E * a, T * k * 4, T * k * 8
    routing = "sigmoid" if spec.router_bias else spec.routing
    if routing == "softmax":
        w.at("moe.softmax", {**b, "logits": logits, "softmax_in": w.up(T * E),
                             "probs": T * E * 4})
        w.at("moe.topk", {**b, "probs": T * E * 4, "weights": wk, "topk_ids": ids})
    elif routing == "softmax_topk":
        w.at("moe.topk", {**b, "logits": logits, "topk_logits": T * k * a, "topk_ids": ids})
        w.at("moe.softmax", {**b, "topk_logits": T * k * a, "softmax_in": w.up(T * k),
                             "weights": wk, "topk_ids": ids})
    else:
        w.at("moe.router", {**b, "logits": logits, "scores": T * E * 4})
        choice = {"choice": T * E * 4} if spec.router_bias else {}
        w.at("moe.topk", {**b, "scores": T * E * 4, **choice, "topk_values": wk,
                          "topk_ids": ids})
        w.at("moe.gather", {**b, "scores": T * E * 4, "topk_ids": ids, "weights": wk})
    w.at("moe.normalize", {**b, "weights": wk, "topk_ids": ids, "weight_sum": T * 4})
    w.at("moe.scatter", {**b, "topk_ids": ids, "weights": wk, "dense_weights": T * E * a,
                         "weights_cast": T * k * a})
    dense = {**held, "dense_weights": T * E * a}
    width = spec.expert_ffn or spec.ffn
    ebias = spec.mlp_bias or spec.expert_bias
    if spec.shared_experts:
        _mlp(w, base, "moe.shared", spec.shared_width // tp, "linear", spec.mlp_bias, dense)
    else:
        w.at("moe.zeros", {**base, **dense, "moe_out": H})
    _mlp(w, base, "moe.expert", width // tp, "expert", ebias, {**dense, "moe_out": H})


def _mla_attention(w: _Walk, base: dict) -> None:
    """runtime/model.py MLAttention, moment by moment: q through q_a -> norm -> q_b (or a plain
    q_proj), kv_a and its norm, RoPE, the latent write, the latent read, kv_b expanding this
    rank's heads over all ``s_kv`` cached tokens, K built [nope | rope], V padded to the query head
    dim, SDPA, the slice back to v_head_dim, o_proj."""
    spec, kvf, device, T, seqs, s_q, s_kv, a = (w.spec, w.kvf, w.device, w.T, w.seqs, w.s_q,
                                                w.s_kv, w.a)
    heads_r = spec.heads // w.tp
    lin, at = w.lin, w.at
    h, L, r = spec.hidden, spec.kv_lora_rank, spec.qk_rope_dim
    nope, vd = spec.qk_nope_dim, spec.v_head_dim
    qd, D = nope + r, L + r
    Q = T * heads_r * qd * a
    if spec.q_lora_rank:
        ql = spec.q_lora_rank
        at("attn.q_a_proj", {**base, "q_a_proj": lin(ql, h, False)})
        at("attn.q_a_layernorm", {**base, "q_a": T * ql * a, "rms_norm": w.rms_of(ql)})
        at("attn.q_b_proj", {**base, "q_a_normed": T * ql * a,
                             "q_b_proj": lin(heads_r * qd, ql, False)})
    else:
        at("attn.q_proj", {**base, "q_proj": lin(heads_r * qd, h, False)})
    at("attn.kv_a_proj", {**base, "q": Q, "kv_a_proj": lin(D, h, False)})
    KVA, C = T * D * a, T * L * a
    at("attn.kv_a_layernorm", {**base, "q": Q, "kv_a": KVA, "rms_norm": w.rms_of(L)})
    live = {**base, "q": Q, "kv_a": KVA, "latent": C}
    if spec.rope_theta:
        at("attn.rope", {**live, "rope_tmp": T * heads_r * r // 2 * a})
    el = T * D
    if kvf.scale_bytes:  # quantized KV: [latent | k_rope] concatenated, one scale per vector
        at("attn.kv_write", {**live, "cat": el * a, "abs": el * a, "quant_fp32": 8 * el})
    N = seqs * s_kv  # cached tokens read
    deq: dict[str, int] = {}
    if kvf.scale_bytes:
        deq = {"kv_deq": N * D * a}
        unpack = N * (D + 1) // 2 * 2 + N * D if kvf.key == "int4" else 0
        at("attn.kv_read", {**base, "q": Q, **deq, "kv_scales": N * a, "unpack": unpack})
    lat = {"kv_latent": N * L * a}
    at("attn.kv_latent", {**base, "q": Q, **deq, **lat})
    KV = N * heads_r * (nope + vd) * a
    at("attn.kv_b_proj", {**base, "q": Q, **deq, **lat,
                          "kv_b_proj": lin(heads_r * (nope + vd), L, False, rows=N)})
    K = N * heads_r * qd * a
    at("attn.k", {**base, "q": Q, **deq, "kv": KV, "k": K})
    V = {"v_pad": K} if vd < qd else {"kv": KV}
    if vd < qd:
        at("attn.v_pad", {**base, "q": Q, "kv": KV, "k": K, **V})
    lse = seqs * heads_r * s_q * 4 if device == "cpu" else 0
    at("attn.sdpa", {**base, "q": Q, "k": K, **V, "out": Q, "logsumexp": lse})
    O = T * heads_r * vd * a
    if vd < qd:
        at("attn.o_slice", {**base, "sdpa_out": Q, "attn_out": O})
    at("attn.o_proj", {**base, "attn_out": O, "o_proj": lin(h, heads_r * vd, False)})
