"""The per-rank memory model (DESIGN §5).

For a spec, precisions, layout (TP t, PP p), workload and engine profile, :func:`estimate` returns for
every rank the line items ``weights``, ``kv_cache``, ``activations``, ``overhead`` and ``total`` in
bytes, with the pieces each line is made of. Weights come from the tensor inventory
(:func:`planner.spec.inventory`) sharded as TP splits it; nothing here counts parameters a second way.

Ranks are numbered stage-major: rank = stage × t + tp_rank. Pipeline stages take contiguous layers,
vLLM's way (``get_pp_indices``): L // p each, the remainder going one each to the stages before the
last. Every TP rank of a stage holds the same bytes (padded vocabulary shards included).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from planner.engines import EngineProfile, engine as get_engine
from planner.errors import InfeasibleError, InputError
from planner.precision import QUANTIZED_ROLES, KVFormat, WeightFormat, kv_format, weight_format
from planner.spec import ModelSpec, Tensor, inventory, param_count, tensor_groups, windows

LINE_ITEMS = ("weights", "kv_cache", "activations", "overhead", "total")

_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Workload:
    """What the model is asked to do."""

    batch: int
    """Sequences decoded together."""
    prompt_tokens: int
    """Prompt length of each sequence."""
    new_tokens: int
    """Tokens generated per sequence."""

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.new_tokens

    def validate(self) -> None:
        for name in ("batch", "prompt_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name.replace('_', ' ')} must be a positive integer, got {v!r}")
        if isinstance(self.new_tokens, bool) or not isinstance(self.new_tokens, int) \
                or self.new_tokens < 0:
            raise InputError(f"new tokens must be a non-negative integer, got {self.new_tokens!r}")
        for name in ("batch", "prompt_tokens", "new_tokens"):
            if getattr(self, name) > 1 << 40:
                raise InputError(f"{name.replace('_', ' ')} {getattr(self, name)} is implausibly large")


@dataclass
class RankMemory:
    """Predicted bytes on one rank."""

    rank: int
    stage: int
    tp_rank: int
    layers: tuple[int, int]
    """Half-open range of layers held by this rank's stage."""
    weights: int
    kv_cache: int
    activations: int
    overhead: int
    detail: dict[str, dict[str, int]] = field(default_factory=dict)
    """The parts of each line item, by name (bytes)."""

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    def bytes(self) -> dict[str, int]:
        return {"weights": self.weights, "kv_cache": self.kv_cache,
                "activations": self.activations, "overhead": self.overhead, "total": self.total}


@dataclass
class Estimate:
    """A full prediction: inputs, per-rank line items and warnings."""

    spec: ModelSpec
    weights: WeightFormat
    kv: KVFormat
    tp: int
    pp: int
    workload: Workload
    engine: EngineProfile
    device: str
    ranks: list[RankMemory]
    params: int
    kv_bytes_per_token: int
    """KV-cache bytes one token of one sequence adds on the busiest rank."""
    warnings: list[str]

    def to_json(self) -> dict:
        w = self.workload
        return {
            "model": {"name": self.spec.name, "family": self.spec.family, "params": self.params},
            "engine": self.engine.name,
            "device": self.device,
            "precision": {"weights": self.weights.key, "kv_cache": self.kv.key},
            "layout": {"tp": self.tp, "pp": self.pp, "ranks": self.tp * self.pp},
            "workload": {"batch": w.batch, "prompt_tokens": w.prompt_tokens,
                         "new_tokens": w.new_tokens, "context": w.context},
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "ranks": [{"rank": r.rank, "stage": r.stage, "tp_rank": r.tp_rank,
                       "layers": list(r.layers), "bytes": r.bytes(), "detail": r.detail}
                      for r in self.ranks],
            "warnings": list(self.warnings),
        }


# -- layout ------------------------------------------------------------------------------------

def stage_layers(layers: int, pp: int) -> list[tuple[int, int]]:
    """Contiguous layer ranges per pipeline stage (vLLM's get_pp_indices rule)."""
    parts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        parts[-i] += 1
    out, start = [], 0
    for n in parts:
        out.append((start, start + n))
        start += n
    return out


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads each rank holds: kv/t, or one replicated head when t > kv (DESIGN §5)."""
    return max(1, spec.kv_heads // tp)


def kv_tokens_held(context: int, window: int, eng: EngineProfile, uniform: bool = False) -> int:
    """Tokens one sequence's cache holds in a layer that attends to at most ``window`` tokens
    (0 = every token): capped at the window (plus the engine's extra tokens) where the engine caps
    such layers (``uniform``: every layer of the model is windowed), then rounded up to whole
    blocks on a paged engine."""
    s = context
    if window and eng.sliding_window_cache and (eng.uniform_window_cache or not uniform):
        s = min(s, window + eng.window_extra_tokens)
    if eng.kv_block_tokens:
        s = -(-s // eng.kv_block_tokens) * eng.kv_block_tokens
    if eng.kv_pad_tokens:  # llama.cpp: GGML_PAD(n_ctx, 256) cells (planner/engines/llamacpp.py)
        s = -(-s // eng.kv_pad_tokens) * eng.kv_pad_tokens
    return s


def kv_by_kind(spec: ModelSpec, lo: int, hi: int, context: int,
               eng: EngineProfile) -> dict[str, dict[str, int]]:
    """Layers lo..hi-1 grouped by attention kind and window: for each, the layer count, the window
    (0 = none) and the tokens per sequence the cache holds there."""
    out: dict[str, dict[str, int]] = {}
    uniform = not windows(spec)[0]
    for i in range(lo, hi):
        kind, w = spec.layer_kind(i), spec.window_of(i)
        k = out.setdefault(kind, {"layers": 0, "window": w,
                                  "tokens_per_sequence": kv_tokens_held(context, w, eng, uniform)})
        k["layers"] += 1
    return out


def padded_vocab(spec: ModelSpec, tp: int, eng: EngineProfile) -> int:
    m = eng.vocab_pad_multiple * tp // math.gcd(eng.vocab_pad_multiple, tp)
    return -(-spec.vocab // m) * m


def check_layout(spec: ModelSpec, fmt: WeightFormat, kvf: KVFormat, tp: int, pp: int,
                 eng: EngineProfile) -> None:
    """Raise InfeasibleError with the reason when the layout or formats cannot work."""
    for name, v in (("TP", tp), ("PP", pp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} degree must be a positive integer, got {v!r}")
    if tp > 1 and not eng.supports_tp:
        raise InfeasibleError(f"engine {eng.name} does not do tensor parallelism; split layers "
                              f"across GPUs with --pp {tp} instead")
    if not eng.allows_weights(fmt.key, fmt.engines):
        limited = f" (it runs only on {', '.join(fmt.engines)})" if fmt.engines else ""
        raise InfeasibleError(f"engine {eng.name} does not run weight format {fmt.key}{limited}")
    if kvf.key not in eng.kv_formats:
        raise InfeasibleError(f"engine {eng.name} does not run KV-cache format {kvf.key}; it runs "
                              f"{', '.join(eng.kv_formats)}")
    if pp > spec.layers:
        raise InfeasibleError(f"PP {pp} exceeds the model's {spec.layers} layers")
    if spec.heads % tp:
        raise InfeasibleError(f"TP {tp} does not divide the {spec.heads} attention heads")
    if not spec.mla:
        kv = spec.kv_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise InfeasibleError(f"TP {tp} and the {kv} KV heads do not divide one another")
    widths = {"FFN inner size": spec.ffn}
    if spec.moe:
        widths["expert FFN size"] = (spec.expert_ffn or spec.ffn)
    for what, width in widths.items():
        if width % tp:
            raise InfeasibleError(f"TP {tp} does not divide the {what} {width}")


def _shard_shape(t: Tensor, spec: ModelSpec, tp: int, eng: EngineProfile) -> tuple[int, ...]:
    shape = list(t.shape)
    if t.split == "column":
        shape[0] //= tp
    elif t.split == "kv":
        shape[0] = kv_heads_per_rank(spec, tp) * spec.head_dim
    elif t.split == "row":
        shape[1] //= tp
    elif t.split == "vocab":
        shape[0] = padded_vocab(spec, tp, eng) // tp
    return tuple(shape)


def tensor_bytes(t: Tensor, shape: tuple[int, ...], fmt: WeightFormat, base_bytes: int,
                 quantize_lm_head: bool) -> int:
    """Bytes of one (sharded) tensor: the weight format for quantized roles, else the base dtype."""
    if t.dtype:
        n = 1
        for d in shape:
            n *= d
        return n * _DTYPE_BYTES[t.dtype]
    if fmt.quantized and (t.role in QUANTIZED_ROLES or (t.role == "lm_head" and quantize_lm_head)):
        why = fmt.check_shape(*shape[-2:]) if len(shape) >= 2 else None
        if why:
            split = (f" (TP splits its {t.shape[-1]} inputs into {shape[-1]} per rank)"
                     if shape != t.shape and t.split == "row" else "")
            raise InfeasibleError(f"{t.name}: {why}{split}")
        return fmt.bytes_for_shape(shape)
    n = 1
    for d in shape:
        n *= d
    return n * base_bytes


# -- activations -------------------------------------------------------------------------------

def _activation_peak(spec: ModelSpec, eng: EngineProfile, tp: int, a: int, tokens: int,
                     seqs: int, s_q: int, s_kv: int, logit_rows: int, vocab_pad: int,
                     has_lm_head: bool, has_layers: bool) -> tuple[int, dict[str, int]]:
    """Peak transient bytes of one forward step on one rank, and the phase that sets it.

    ``tokens`` query tokens over ``seqs`` sequences (``s_q`` each) attend to ``s_kv`` cached tokens.
    The phases are the attention block, the MLP block and the LM head; each holds the residual
    stream and the normed input plus its own intermediates, and the peak is the largest phase.
    """
    h = spec.hidden
    T = tokens
    heads_r = spec.heads // tp
    kv_r = kv_heads_per_rank(spec, tp)
    stream = 2 * T * h * a  # residual + normed hidden states
    phases: dict[str, dict[str, int]] = {}
    if has_layers:
        if spec.mla:
            qkv = (T * heads_r * spec.q_head_dim * a                       # q
                   + T * (spec.kv_lora_rank + spec.qk_rope_dim) * a        # latent
                   + T * heads_r * (spec.q_head_dim + spec.v_dim) * a)     # expanded k, v
        else:
            qkv = T * (heads_r + 2 * kv_r) * spec.head_dim * a
        attn = {"hidden": stream, "qkv": qkv,
                "attn_out": T * heads_r * spec.v_dim * a, "o_proj_out": T * h * a}
        if spec.qk_norm and not spec.mla:  # normed copies of q and k
            attn["qk_norm"] = T * (heads_r + kv_r) * spec.head_dim * a
        if spec.sandwich_norms:  # the post-attention norm's output beside the attention output
            attn["post_norm"] = T * h * a
        # softcapped scores need an explicit score matrix where the fused kernel cannot cap them
        if eng.attention == "eager" or (spec.attn_softcap and not eng.fused_softcap):
            # a windowed layer's queries see at most window (+ s_q) keys; the worst layer counts
            unbounded, widest = windows(spec)
            s_seen = s_kv if unbounded else min(s_kv, widest + s_q)
            scores = seqs * heads_r * s_q * s_seen
            attn["scores"] = scores * a
            attn["softmax_fp32"] = scores * 4
            if spec.attn_softcap:  # tanh(scores / cap) * cap: one more score-sized tensor
                attn["softcap"] = scores * a
            if eng.repeat_kv and not spec.mla and kv_r < heads_r:
                attn["repeat_kv"] = 2 * seqs * heads_r * s_seen * spec.head_dim * a
        phases["attention"] = attn
        n_mats = 3 if spec.gated_ffn else 2
        dense_layers = spec.layers - spec.moe_layer_count()
        mlp: dict[str, int] = {}
        if dense_layers:
            mlp = {"hidden": stream, "ffn": n_mats * T * (spec.ffn // tp) * a,
                   "down_out": T * h * a}
            if spec.sandwich_norms:
                mlp["post_norm"] = T * h * a
        if spec.moe:
            width = (spec.expert_ffn or spec.ffn) // tp
            moe = {"hidden": stream,
                   "router": T * spec.experts * 4 + T * spec.experts_per_token * 8,
                   # worst case: one expert receives every token (each token visits an expert once)
                   "expert_in": T * h * a, "expert_ffn": n_mats * T * width * a,
                   "moe_out": T * h * a}
            if spec.shared_experts:
                moe["shared_out"] = T * h * a
            if spec.sandwich_norms:
                moe["post_norm"] = T * h * a
            if sum(moe.values()) > sum(mlp.values()):
                mlp = moe
        phases["mlp"] = mlp
    if has_lm_head:
        local = logit_rows * (vocab_pad // tp) * a
        head = {"hidden": stream if T else 0, "logits_local": local,
                "logits_fp32": logit_rows * vocab_pad * 4}
        if tp > 1:
            head["logits_gathered"] = logit_rows * vocab_pad * a
        if spec.final_softcap:  # tanh(logits / cap) * cap in fp32
            head["logits_softcap"] = logit_rows * vocab_pad * 4
        phases["lm_head"] = head
    if not phases:
        return 0, {}
    name = max(phases, key=lambda k: sum(phases[k].values()))
    peak = phases[name]
    return sum(peak.values()), {f"{name}.{k}": v for k, v in peak.items()}


# -- the runtime's own activation model --------------------------------------------------------
# planner launch measures these (runtime/NOTES.md); planner/activations.py walks one forward step
# of runtime/model.py allocation by allocation.

from planner.activations import (_linear_call, runtime_act_key,  # noqa: E402,F401 (re-exported)
                                 runtime_activation_peak as _runtime_activation_peak)


def _tied_head(spec: ModelSpec) -> Tensor:
    """The LM head a later pipeline stage holds as its own copy of a tied embedding."""
    return Tensor("lm_head.weight", (spec.vocab, spec.hidden), "lm_head", "vocab", spec.layers)


@functools.lru_cache(maxsize=4096)
def _class_weights(spec: ModelSpec, cls: str, fmt: WeightFormat, tp: int, eng: EngineProfile,
                   base: int, quantize_lm_head: bool) -> tuple[tuple[tuple[str, int], ...], int]:
    """Bytes by role of one rank's shard of one layer class (pre, dense, moe, post, tied_head),
    and its largest quantized linear shard (elements)."""
    groups = ((_tied_head(spec), 1),) if cls == "tied_head" else tensor_groups(spec)[cls]
    detail: dict[str, int] = {}
    largest = 0
    for t, count in groups:
        shape = _shard_shape(t, spec, tp, eng)
        role = "quantized" if (fmt.quantized and t.role in QUANTIZED_ROLES) else t.role
        detail[role] = detail.get(role, 0) + count * tensor_bytes(t, shape, fmt, base,
                                                                  quantize_lm_head)
        if t.role in QUANTIZED_ROLES and len(shape) == 2:
            largest = max(largest, shape[0] * shape[1])
    return tuple(detail.items()), largest


def _stage_weights(spec: ModelSpec, fmt: WeightFormat, tp: int, eng: EngineProfile, base: int,
                   quantize_lm_head: bool, lo: int, hi: int, first: bool,
                   last: bool) -> tuple[dict[str, int], int]:
    """Weight bytes of one rank of a stage by role, and the largest quantized linear shard
    (elements): embeddings on the first stage, final norm and LM head on the last (a tied
    embedding copied there when it is not also the first), and its blocks by class."""
    counts: dict[str, int] = {}
    if first:
        counts["pre"] = 1
    if last:
        counts["post"] = 1
        if spec.tied_embeddings and not first:
            counts["tied_head"] = 1
    moe_blocks = spec.moe_layer_count(lo, hi)
    counts["moe"], counts["dense"] = moe_blocks, hi - lo - moe_blocks
    detail: dict[str, int] = {}
    largest = 0
    for cls, n in counts.items():
        if not n:
            continue
        items, big = _class_weights(spec, cls, fmt, tp, eng, base, quantize_lm_head)
        for role, b in items:
            detail[role] = detail.get(role, 0) + n * b
        largest = max(largest, big)
    return detail, largest


def _stored_stage_weights(spec: ModelSpec, tp: int, eng: EngineProfile, stored: dict[str, int],
                          lo: int, hi: int, first: bool, last: bool) -> tuple[dict[str, int], int]:
    """As _stage_weights, with each tensor's bytes taken from a checkpoint (shard = its share)."""
    detail: dict[str, int] = {}
    held = [t for t in inventory(spec)
            if (t.layer == -1 and first) or (t.layer == spec.layers and last) or lo <= t.layer < hi]
    if spec.tied_embeddings and last and not first:
        held.append(_tied_head(spec))
    for t in held:
        shape = _shard_shape(t, spec, tp, eng)
        b = stored[t.name if t.name in stored else "model.embed_tokens.weight"]
        nbytes = -(-b * math.prod(shape) // t.numel)
        detail[t.role] = detail.get(t.role, 0) + nbytes
    return detail, 0


# -- the estimate ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineStep:
    """One forward step of one pipeline stage, as an engine's own activation walk sees it
    (planner/engines/<activation_model>.py: ``activation_peak(step) -> (bytes, detail)``)."""

    spec: ModelSpec
    fmt: WeightFormat
    kvf: KVFormat
    eng: EngineProfile
    tp: int
    pp: int
    device: str
    quantize_lm_head: bool
    workload: Workload
    layers: tuple[int, int]
    """[lo, hi) layers of this stage."""
    tokens: int
    """Tokens in the step across the batch."""
    seqs: int
    """Sequences in the step."""
    s_q: int
    """Query tokens per sequence."""
    s_kv: int
    """Keys per sequence the step attends to."""
    logit_rows: int
    """Rows of logits the step computes."""
    vocab_pad: int
    """Vocabulary rows as the engine pads them."""
    has_head: bool
    """The stage holds the LM head."""
    kv_tokens: int
    """Tokens per sequence the stage's KV cache holds (its largest layer kind)."""


def engine_walk(eng: EngineProfile):
    """The module of an engine's own activation walk (``activation_model`` names it)."""
    import importlib

    return importlib.import_module(f"planner.engines.{eng.activation_model}")


def estimate(spec: ModelSpec, weights: str | WeightFormat = "fp16",
             kv_cache: str | KVFormat = "fp16", tp: int = 1, pp: int = 1,
             workload: Workload | None = None, engine: str | EngineProfile = "runtime",
             device: str = "cuda", quantize_lm_head: bool = False,
             stored: dict[str, int] | None = None) -> Estimate:
    """Predict per-rank memory. Raises InputError / InfeasibleError with a reason.

    ``stored`` maps inventory names to the exact bytes a checkpoint stores them in (``--weights
    stored``): each rank then holds its shard of those bytes, and ``weights`` only names the format
    used for the layout checks and the activation dtype.
    """
    fmt = weights if isinstance(weights, WeightFormat) else weight_format(weights)
    kvf = kv_cache if isinstance(kv_cache, KVFormat) else kv_format(kv_cache)
    eng = engine if isinstance(engine, EngineProfile) else get_engine(engine)
    wl = workload or Workload(1, 2048, 0)
    wl.validate()
    if device not in ("cuda", "cpu"):
        raise InputError(f"device must be cuda or cpu, got {device!r}")
    warnings: list[str] = []
    if (eng.kv_follows_model_dtype and kvf.key in _DTYPE_BYTES and fmt.key in _DTYPE_BYTES
            and kvf.key != fmt.key):  # transformers: the cache stores K/V in the model's dtype
        warnings.append(f"engine {eng.name} caches K/V in the model's dtype: KV-cache {kvf.key} "
                        f"planned as {fmt.key}")
        kvf = kv_format(fmt.key)
    if kvf.key in dict(eng.kv_aliases):  # llama.cpp stores int8/int4 caches as q8_0/q4_0 blocks
        kvf = kv_format(dict(eng.kv_aliases)[kvf.key])
    check_layout(spec, fmt, kvf, tp, pp, eng)
    if wl.context > spec.max_context:
        warnings.append(f"context {wl.context} exceeds the model's max context {spec.max_context}")
    if eng.measured_formats and stored is None and fmt.key not in eng.measured_formats:
        warnings.append(f"weight format {fmt.key} has never been measured through the {eng.name} "
                        f"engine (measured: {', '.join(eng.measured_formats)}); its activations "
                        "are the walk's prediction only")

    base = 4 if fmt.key == "fp32" else 2  # unquantized tensors: fp32, else fp16/bf16
    act = 4 if fmt.key == "fp32" else 2
    vocab_pad = padded_vocab(spec, tp, eng)
    stages = stage_layers(spec.layers, pp)

    # KV cache: tokens held per sequence by each kind of layer, rounded up to whole blocks on
    # paged engines.
    if spec.mla:  # one latent of kv_lora_rank + rope dims per token per layer, replicated over TP
        per_token_layer = kvf.vector_bytes(spec.kv_lora_rank + spec.qk_rope_dim)
    else:
        per_token_layer = 2 * kv_heads_per_rank(spec, tp) * kvf.vector_bytes(spec.head_dim)
    walk = engine_walk(eng) if eng.activation_model not in ("runtime", "phases") else None
    if hasattr(walk, "kv_heads") and not spec.mla:  # the engine caches other heads (Falcon-40B)
        per_token_layer = 2 * walk.kv_heads(spec, tp) * kvf.vector_bytes(spec.head_dim)

    # Activation step shapes.
    if eng.profile_tokens:
        steps = [(eng.profile_tokens, eng.profile_seqs or wl.batch, 1, 1,
                  eng.profile_seqs or wl.batch)]
    else:
        if eng.prefill_chunk_tokens and wl.batch * wl.prompt_tokens > eng.prefill_chunk_tokens:
            chunk = eng.prefill_chunk_tokens
            per_seq = max(1, chunk // wl.batch)
            pre = (min(chunk, wl.batch * wl.prompt_tokens), wl.batch, per_seq, wl.prompt_tokens)
        else:
            pre = (wl.batch * wl.prompt_tokens, wl.batch, wl.prompt_tokens, wl.prompt_tokens)
        logit_rows_pre = pre[0] if eng.logits_all_positions else wl.batch
        steps = [(*pre, logit_rows_pre)]
        if wl.new_tokens:
            steps.append((wl.batch, wl.batch, 1, wl.context, wl.batch))

    ranks: list[RankMemory] = []
    for stage, (lo, hi) in enumerate(stages):
        first, last = stage == 0, stage == pp - 1
        if stored is not None:
            wdetail, largest = _stored_stage_weights(spec, tp, eng, stored, lo, hi, first, last)
        else:
            wdetail, largest = _stage_weights(spec, fmt, tp, eng, base, quantize_lm_head,
                                              lo, hi, first, last)
        host: dict[str, int] = {}
        if eng.embedding_on_host and device == "cuda" and "embedding" in wdetail:
            # llama.cpp keeps the token embedding in host memory; a tied LM head is loaded a
            # second time for the output layer on the GPU (planner/engines/llamacpp.py)
            host["embedding"] = wdetail.pop("embedding")
            if spec.tied_embeddings and last:
                wdetail["lm_head"] = wdetail.get("lm_head", 0) + host["embedding"]
        w_bytes = sum(wdetail.values())

        n_layers = hi - lo
        by_kind = kv_by_kind(spec, lo, hi, wl.context, eng)
        if hasattr(walk, "kv_tokens"):  # the engine's own rule for the tokens a cache holds
            for k in by_kind.values():
                k["tokens_per_sequence"] = walk.kv_tokens(eng, wl, k["window"])
        kv_bytes = 0
        s = max(k["tokens_per_sequence"] for k in by_kind.values())
        for k in by_kind.values():
            k["bytes"] = wl.batch * k["tokens_per_sequence"] * k["layers"] * per_token_layer
            kv_bytes += k["bytes"]

        has_head = last
        best, best_detail = 0, {}
        for tokens, seqs, s_q, s_kv, logit_rows in steps:
            if eng.activation_model == "runtime":
                peak, det = _runtime_activation_peak(spec, fmt, kvf, device, quantize_lm_head, tp,
                                                     tokens, seqs, s_q, s_kv, vocab_pad, has_head,
                                                     n_layers > 0)
            elif eng.activation_model != "phases":  # the engine's own walk (planner/engines/)
                peak, det = engine_walk(eng).activation_peak(EngineStep(
                    spec=spec, fmt=fmt, kvf=kvf, eng=eng, tp=tp, pp=pp, device=device,
                    quantize_lm_head=quantize_lm_head, workload=wl, layers=(lo, hi),
                    tokens=tokens, seqs=seqs, s_q=s_q, s_kv=s_kv, logit_rows=logit_rows,
                    vocab_pad=vocab_pad, has_head=has_head, kv_tokens=s))
            else:
                peak, det = _activation_peak(spec, eng, tp, act, tokens, seqs, s_q, s_kv,
                                             logit_rows, vocab_pad, has_head, n_layers > 0)
            if peak > best:
                best, best_detail = peak, det
        if eng.activation_model == "runtime":
            pass  # dequantized / cast weight copies are part of each linear call above
        elif stored is None and fmt.quantized and not eng.is_fused(fmt.key, device):
            scratch_bytes = 4 if device == "cpu" else act  # the CPU reference dequantizes to fp32
            best_detail["dequant_scratch"] = largest * scratch_bytes
            best += best_detail["dequant_scratch"]

        if device == "cpu":
            over = {"cpu_fixed": eng.cpu_overhead_bytes}
        else:
            over = {"cuda_context": eng.cuda_context_bytes, "workspace": eng.workspace_bytes}
            if tp * pp > 1:
                over["nccl"] = eng.nccl_bytes
            if eng.cuda_graph_bytes and eng.cuda_graphs:
                over["cuda_graphs"] = eng.cuda_graph_bytes
        for tp_rank in range(tp):
            ranks.append(RankMemory(
                rank=stage * tp + tp_rank, stage=stage, tp_rank=tp_rank, layers=(lo, hi),
                weights=w_bytes, kv_cache=kv_bytes, activations=best,
                overhead=sum(over.values()),
                detail={"weights": dict(wdetail),
                        "kv_cache": {"tokens_per_sequence": s, "bytes_per_token_per_layer":
                                     per_token_layer, "layers": n_layers,
                                     "by_kind": {k: dict(v) for k, v in by_kind.items()}},
                        "activations": dict(best_detail), "overhead": dict(over),
                        **({"host": dict(host)} if host else {})}))
    busiest = max(hi - lo for lo, hi in stages)
    return Estimate(spec=spec, weights=fmt, kv=kvf, tp=tp, pp=pp, workload=wl, engine=eng,
                    device=device, ranks=ranks, params=param_count(spec),
                    kv_bytes_per_token=busiest * per_token_layer, warnings=warnings)


def total_weight_bytes(spec: ModelSpec, weights: str = "fp16", quantize_lm_head: bool = False,
                       engine: str = "runtime") -> int:
    """Bytes of the whole model (TP 1, PP 1) in a weight format."""
    return estimate(spec, weights, "fp16", 1, 1, Workload(1, 1, 0), engine,
                    quantize_lm_head=quantize_lm_head).ranks[0].weights
