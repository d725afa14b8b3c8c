"""Model specs and the tensor inventory.

A :class:`ModelSpec` describes a decoder-only transformer exactly enough to enumerate every tensor.
:func:`inventory` turns it into a list of :class:`Tensor` (name, shape, role, TP split, layer), and every
parameter count and byte figure in the project comes from that one list: there is no second formula.

Names follow Hugging Face's Llama layout for every family (``model.layers.3.self_attn.q_proj.weight``);
fused projections of other families (GPT-2 ``c_attn``, BLOOM/Falcon ``query_key_value``, Phi-3
``qkv_proj``/``gate_up_proj``, GLM ``query_key_value``) are listed as their separate q/k/v and gate/up
parts, which hold exactly the same elements, scales and bytes. Weights are (out_features, in_features),
GPT-2's Conv1D included.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import math

from planner.errors import InputError
from planner.vision import VisionSpec, vision_inventory

MAX_EXPERT_FFNS = 1 << 16
"""Expert FFNs (MoE layers x experts) a spec may describe; DeepSeek-V3 has 58 x 256 = 14,848. The
inventory lists every expert of every MoE layer, so a tiny hostile config with 65536 experts x 10000
layers would otherwise make the planner build ~2e9 tensors."""

FAMILIES = ("llama", "mistral", "qwen2", "phi3", "opt", "gpt2", "bloom", "falcon", "glm",
            "mixtral", "deepseek_v3", "deepseek_v2", "qwen3", "qwen3_moe", "gemma2", "gemma3",
            "gpt_oss", "llama4", "phimoe", "glm4", "glm4_moe", "mistral3", "generic")
"""Architecture names. A family picks the checkpoint's tensor-naming convention (planner/names.py)
and is shown to the user; no byte and no code path depends on it: every structural difference is a
feature field of ModelSpec below."""

LAYER_KINDS = ("full", "sliding", "chunked")
"""Attention kinds per layer: full (every token), sliding (the last ``sliding_window`` tokens),
chunked (tokens of the current ``attention_chunk``-token chunk; Llama 4)."""

QK_NORMS = ("", "rms", "l2")
"""Per-head query/key norm: none, RMSNorm with a (head_dim,) weight each (Qwen3, Gemma 3,
GLM-4.5), weightless L2 norm (Llama 4, on its RoPE layers)."""

ROUTINGS = ("softmax", "softmax_topk", "sigmoid")
"""MoE routing: softmax over all experts then top-k (Mixtral, Qwen3-MoE, Phi-3.5-MoE); top-k of
the logits then softmax over the k (gpt-oss); sigmoid scores (DeepSeek-V3, GLM-4.5, Llama 4)."""

# Files a new architecture touches (the goal is at most six):
#   planner/sources.py     its config.json / GGUF metadata -> these feature fields
#   planner/names.py       its checkpoint tensor names (HF and GGUF), if they are not Llama's
#   planner/catalog/*.yaml catalog entries with sources
#   tests/configs/         a real config.json for the transformers oracle
#   runtime/model.py and planner/activations.py only when it brings a feature the generic block
#   does not have yet (a new kind of layer, norm or routing).

# How tensor parallelism splits a tensor (DESIGN §5).
SPLITS = ("column", "row", "kv", "vocab", "replicated")


@dataclass(frozen=True)
class Tensor:
    """One tensor of the inventory."""

    name: str
    """Canonical name (HF Llama layout)."""
    shape: tuple[int, ...]
    """Full (unsharded) shape; linears are (out_features, in_features)."""
    role: str
    """embedding, position_embedding, norm, linear, expert, bias, router, lm_head."""
    split: str
    """TP split: column (dim 0), row (dim 1), kv (dim 0 by KV heads, replicated when TP > KV heads),
    vocab (dim 0, padded to a multiple of TP), replicated."""
    layer: int
    """Layer index for pipeline stages; -1 = before the first layer, ``layers`` = after the last."""
    dtype: str | None = None
    """Fixed storage dtype when the tensor ignores the weight format (e.g. an fp32 router bias)."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, exactly enough to enumerate every tensor."""

    name: str
    """Hugging Face id or a path-derived name."""
    family: str
    """Architecture family: one of FAMILIES."""
    layers: int
    """Number of transformer blocks (excluding the multi-token-prediction layers, mtp_layers)."""
    hidden: int
    """Hidden size (model width)."""
    heads: int
    """Attention (query) heads."""
    kv_heads: int
    """Key/value heads (GQA/MQA: fewer than heads)."""
    head_dim: int
    """Dimension of one attention head (for MLA: qk_nope_dim + qk_rope_dim is the query head)."""
    ffn: int
    """FFN inner size; for gated FFNs the width of each of gate and up."""
    vocab: int
    """Vocabulary size (rows of the embedding as stored in the checkpoint)."""
    gated_ffn: bool = True
    """SwiGLU/GeGLU (gate, up, down) or plain MLP (up, down)."""
    activation: str = "silu"
    """FFN activation: silu, gelu, relu."""
    gelu_approx: str = "tanh"
    """Which GELU a gelu activation is, as torch's F.gelu ``approximate`` names it: "tanh" (GPT-2's
    gelu_new, BLOOM, Gemma's gelu_pytorch_tanh) or "none", the exact erf form (Falcon's nn.GELU(),
    GLM-130B's F.gelu). Memory-neutral, needed for real outputs."""
    tied_embeddings: bool = False
    """LM head shares the input embedding matrix."""
    norm: str = "rmsnorm"
    """rmsnorm (weight only) or layernorm (weight and bias)."""
    qkv_bias: bool = False
    """Q, K and V projections have biases (Qwen2, OPT, GPT-2, BLOOM, GLM)."""
    o_bias: bool = False
    """The attention output projection has a bias."""
    mlp_bias: bool = False
    """FFN projections have biases."""
    learned_positions: int = 0
    """Rows of a learned absolute position table (0 = none; OPT: max positions + 2)."""
    position_offset: int = 0
    """Offset of the first position in that table (OPT: 2)."""
    embed_norm: bool = False
    """A LayerNorm right after the token embedding (BLOOM)."""
    parallel_attn: bool = False
    """Attention and MLP read the same input in parallel (GPT-J/Falcon)."""
    parallel_norms: int = 1
    """With parallel_attn: 1 shared input norm (Falcon-7B) or 2 (Falcon-40B ln_attn and ln_mlp)."""
    sliding_window: int = 0
    """Window in tokens of the sliding layers (0 = none). With ``layer_types`` empty, every layer
    is sliding when this is set (Mistral-7B)."""
    attention_chunk: int = 0
    """Chunk in tokens of the chunked-attention layers (Llama 4: 8192; 0 = none)."""
    layer_types: tuple[str, ...] = ()
    """Attention kind of each layer (LAYER_KINDS), one per layer; empty = all full, or all sliding
    when sliding_window is set. From config.json ``layer_types`` or the model's pattern (Gemma 2
    alternation, Gemma 3's 5 local : 1 global, gpt-oss alternation, Llama 4's 3 chunked : 1 global)."""
    nope_layers: tuple[int, ...] = ()
    """Layers that apply no rotary embedding (Llama 4's global NoPE layers)."""
    qk_norm: str = ""
    """Per-head query/key norm: one of QK_NORMS."""
    sandwich_norms: bool = False
    """A norm after attention and after the FFN as well as before each (Gemma 2/3, GLM-4):
    post_self_attn_layernorm and post_mlp_layernorm, one (hidden,) weight each."""
    norm_offset: bool = False
    """Norm weights are applied as (1 + w) (Gemma): memory-neutral, needed for real outputs."""
    attn_softcap: float = 0.0
    """tanh soft-capping of attention scores (Gemma 2: 50; 0 = none)."""
    final_softcap: float = 0.0
    """tanh soft-capping of the final logits (Gemma 2: 30; 0 = none)."""
    attn_sinks: bool = False
    """A learned sink logit per attention head (gpt-oss): self_attn.sinks, (heads,)."""
    embed_scale: bool = False
    """The token embedding is multiplied by sqrt(hidden) (Gemma): memory-neutral."""
    lm_head_bias: bool = False
    """The LM head has a bias (Phi-3.5-MoE)."""
    experts: int = 0
    """Routed experts per MoE layer (0 = dense)."""
    experts_per_token: int = 0
    """Experts each token is routed to."""
    shared_experts: int = 0
    """Always-active shared experts per MoE layer (DeepSeek)."""
    expert_ffn: int = 0
    """FFN inner size of one expert (defaults to ffn)."""
    dense_layers: int = 0
    """Leading layers with a dense FFN instead of MoE (DeepSeek first_k_dense_replace)."""
    router_bias: bool = False
    """An fp32 per-expert score-correction bias in each router (DeepSeek-V3, GLM-4.5)."""
    router_linear_bias: bool = False
    """The router linear has an ordinary bias (gpt-oss)."""
    expert_bias: bool = False
    """Routed-expert projections have biases (gpt-oss)."""
    routing: str = "softmax"
    """How router logits become expert weights: one of ROUTINGS."""
    moe_step: int = 1
    """Every moe_step-th layer is MoE: layer i (past dense_layers) is MoE when (i + 1) % moe_step
    == 0 (Llama 4 Maverick interleave_moe_layer_step 2; Qwen-MoE decoder_sparse_step)."""
    mlp_only_layers: tuple[int, ...] = ()
    """Layers with a dense FFN although the pattern makes them MoE (Qwen-MoE mlp_only_layers)."""
    shared_expert_ffn: int = 0
    """Inner size of the shared-expert FFN as a whole (0 = expert_ffn x shared_experts; Llama 4:
    intermediate_size)."""
    q_lora_rank: int = 0
    """MLA: rank of the query down-projection (0 = plain q_proj)."""
    kv_lora_rank: int = 0
    """MLA: rank of the joint KV latent (0 = no MLA)."""
    qk_nope_dim: int = 0
    """MLA: per-head query/key dimension without rotary embedding."""
    qk_rope_dim: int = 0
    """MLA: per-head (and shared key) rotary dimension."""
    v_head_dim: int = 0
    """MLA: per-head value dimension."""
    mtp_layers: int = 0
    """Multi-token-prediction layers a checkpoint stores after the last block, as
    ``model.layers.{layers}`` ... (DeepSeek-V3, GLM-4.5 ``num_nextn_predict_layers``): not part of
    the planned model (engines run them only for speculative decoding); inspect excludes them."""
    max_context: int = 2048
    """Longest context the model supports (max_position_embeddings)."""
    rope_theta: float = 0.0
    """RoPE base (0 = no rotary embedding)."""
    alibi: bool = False
    """ALiBi attention biases (BLOOM): no position parameters."""
    norm_eps: float = 1e-5
    """Norm epsilon."""
    vision: VisionSpec | None = None
    """The vision tower and projector of a multimodal checkpoint (planned from its text model;
    the tower's tensors occupy memory and are listed with role ``vision``)."""
    dtype: str = "fp16"
    """Dtype the original checkpoint is published in."""
    source: str = ""
    """Where these numbers come from."""
    tensors: tuple[Tensor, ...] = field(default=(), hash=False, repr=False)
    """An explicit inventory for an architecture known only to transformers (family 'generic',
    planner/generic.py); when set, inventory() returns it. Left out of the hash (equal specs still
    hash equal) so the cached functions keyed on a spec do not rehash thousands of tensors."""

    # -- derived ---------------------------------------------------------------------------
    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def q_head_dim(self) -> int:
        """Per-head query (and key) dimension."""
        return self.qk_nope_dim + self.qk_rope_dim if self.mla else self.head_dim

    @property
    def v_dim(self) -> int:
        """Per-head value dimension."""
        return self.v_head_dim if self.mla else self.head_dim

    def is_moe_layer(self, i: int) -> bool:
        return (self.moe and i >= self.dense_layers and (i + 1) % self.moe_step == 0
                and i not in self.mlp_only_layers)

    def moe_layer_count(self, lo: int = 0, hi: int | None = None) -> int:
        """MoE layers among lo..hi-1 (all layers by default)."""
        prefix = _moe_prefix(self)
        return prefix[self.layers if hi is None else hi] - prefix[lo]

    def layer_kind(self, i: int) -> str:
        """Attention kind of layer i (LAYER_KINDS)."""
        if self.layer_types:
            return self.layer_types[i]
        return "sliding" if self.sliding_window else "full"

    def window_of(self, i: int) -> int:
        """Tokens layer i can attend to at most (0 = unbounded)."""
        kind = self.layer_kind(i)
        return (self.sliding_window if kind == "sliding" else
                self.attention_chunk if kind == "chunked" else 0)

    def uses_rope(self, i: int) -> bool:
        return bool(self.rope_theta) and i not in self.nope_layers

    @property
    def shared_width(self) -> int:
        """Inner size of the shared-expert FFN (0 = none)."""
        if not self.shared_experts:
            return 0
        return self.shared_expert_ffn or (self.expert_ffn or self.ffn) * self.shared_experts

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        # [name, shape, role, split, layer] (+ dtype when fixed): compact in a plan file
        d["tensors"] = [[t.name, list(t.shape), t.role, t.split, t.layer] + ([t.dtype] if t.dtype
                                                                             else [])
                        for t in self.tensors]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> "ModelSpec":
        """Build and validate a spec from a mapping; errors name ``where`` and the field."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping of spec fields")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            ftype = known[key].type
            if key == "vision":
                kwargs[key] = None if value is None else VisionSpec.from_dict(
                    value, f"{where}: field 'vision'")
                continue
            if key == "tensors":
                kwargs[key] = _tensors_from(value, f"{where}: field 'tensors'")
                continue
            kwargs[key] = _coerce(value, ftype, f"{where}: field {key!r}")
        for req in ("name", "family", "layers", "hidden", "heads", "vocab"):
            if req not in kwargs:
                raise InputError(f"{where}: missing field {req!r}")
        kwargs.setdefault("kv_heads", kwargs["heads"])
        if kwargs.get("router_bias") and "routing" not in kwargs:
            # specs and plans written before the routing field gave router_bias alone; the
            # score-correction bias exists only with sigmoid scores
            kwargs["routing"] = "sigmoid"
        for f in ("heads", "hidden", "layers"):
            if kwargs[f] <= 0:
                hf = {"heads": "num_attention_heads", "hidden": "hidden_size",
                      "layers": "num_hidden_layers"}[f]
                raise InputError(f"{where}: {hf} must be positive, got {kwargs[f]}")
        if "head_dim" not in kwargs:
            if kwargs["hidden"] % kwargs["heads"]:
                raise InputError(f"{where}: hidden {kwargs['hidden']} is not a multiple of heads "
                                 f"{kwargs['heads']}; give head_dim")
            kwargs["head_dim"] = kwargs["hidden"] // kwargs["heads"]
        kwargs.setdefault("ffn", 4 * kwargs["hidden"])
        spec = cls(**kwargs)
        spec.validate(where)
        return spec

    def validate(self, where: str = "spec") -> None:
        """Raise InputError naming the field when the spec cannot describe a real model."""
        if self.family not in FAMILIES:
            raise InputError(f"{where}: unknown family {self.family!r}; known: {', '.join(FAMILIES)}")
        positive = ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
                    "max_context")
        for f in positive:
            v = getattr(self, f)
            if v <= 0:
                raise InputError(f"{where}: field {f!r} must be positive, got {v}")
        limits = {"layers": 10_000, "hidden": 1 << 20, "heads": 1 << 16, "vocab": 1 << 24,
                  "ffn": 1 << 22, "head_dim": 1 << 14, "experts": 1 << 16, "expert_ffn": 1 << 22,
                  "q_lora_rank": 1 << 20, "kv_lora_rank": 1 << 20, "qk_nope_dim": 1 << 14,
                  "qk_rope_dim": 1 << 14, "v_head_dim": 1 << 14, "max_context": 1 << 32,
                  "learned_positions": 1 << 24, "kv_heads": 1 << 16, "shared_experts": 1 << 10}
        for f, lim in limits.items():
            if getattr(self, f) > lim:
                raise InputError(f"{where}: field {f!r} = {getattr(self, f)} is implausibly large")
        for f in ("experts", "experts_per_token", "shared_experts", "expert_ffn", "dense_layers",
                  "q_lora_rank", "kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim",
                  "sliding_window", "learned_positions", "position_offset"):
            if getattr(self, f) < 0:
                raise InputError(f"{where}: field {f!r} must not be negative")
        if not self.mla and self.heads % self.kv_heads:
            raise InputError(f"{where}: heads ({self.heads}) must be a multiple of kv_heads "
                             f"({self.kv_heads})")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise InputError(f"{where}: norm must be rmsnorm or layernorm, got {self.norm!r}")
        if self.activation not in ("silu", "gelu", "relu"):
            raise InputError(f"{where}: activation must be silu, gelu or relu")
        if self.mtp_layers < 0:
            raise InputError(f"{where}: mtp_layers must be >= 0, got {self.mtp_layers}")
        if self.gelu_approx not in ("tanh", "none"):
            raise InputError(f"{where}: gelu_approx must be tanh or none, got {self.gelu_approx!r}")
        if self.moe and not (0 < self.experts_per_token <= self.experts):
            raise InputError(f"{where}: experts per token ({self.experts_per_token}) must be in "
                             f"1..experts ({self.experts})")
        if self.mla and not (self.qk_rope_dim and self.qk_nope_dim and self.v_head_dim):
            raise InputError(f"{where}: MLA needs qk_nope_dim, qk_rope_dim and v_head_dim")
        if self.layer_types:
            if len(self.layer_types) != self.layers:
                raise InputError(f"{where}: layer_types lists {len(self.layer_types)} layers but "
                                 f"the model has {self.layers}")
            bad = sorted(set(self.layer_types) - set(LAYER_KINDS))
            if bad:
                raise InputError(f"{where}: unknown layer kind {bad[0]!r} in layer_types; known: "
                                 f"{', '.join(LAYER_KINDS)}")
            if "sliding" in self.layer_types and self.sliding_window <= 0:
                raise InputError(f"{where}: sliding layers need a positive sliding_window")
            if "chunked" in self.layer_types and self.attention_chunk <= 0:
                raise InputError(f"{where}: chunked layers need a positive attention_chunk")
        if self.attention_chunk < 0:
            raise InputError(f"{where}: field 'attention_chunk' must not be negative")
        if any(not 0 <= i < self.layers for i in self.nope_layers + self.mlp_only_layers):
            raise InputError(f"{where}: nope_layers / mlp_only_layers name a layer outside "
                             f"0..{self.layers - 1}")
        if self.qk_norm not in QK_NORMS:
            raise InputError(f"{where}: qk_norm must be one of {', '.join(map(repr, QK_NORMS))}")
        if self.routing not in ROUTINGS:
            raise InputError(f"{where}: routing must be one of {', '.join(ROUTINGS)}")
        if self.router_bias and self.routing != "sigmoid":
            raise InputError(f"{where}: router_bias (the score-correction bias) needs routing "
                             f"sigmoid, got {self.routing}")
        if self.moe_step < 1:
            raise InputError(f"{where}: moe_step must be at least 1")
        for f in ("attn_softcap", "final_softcap", "rope_theta", "norm_eps"):
            v = getattr(self, f)
            if not math.isfinite(v) or v < 0:
                raise InputError(f"{where}: field {f!r} must be a finite non-negative number, "
                                 f"got {v}")
        if self.shared_expert_ffn < 0:
            raise InputError(f"{where}: field 'shared_expert_ffn' must not be negative")
        if self.parallel_norms not in (1, 2):
            raise InputError(f"{where}: parallel_norms must be 1 or 2")
        if self.dense_layers > self.layers:
            raise InputError(f"{where}: dense_layers exceeds layers")
        moe_layers = self.layers - self.dense_layers
        if self.moe and moe_layers * self.experts > MAX_EXPERT_FFNS:
            raise InputError(f"{where}: {moe_layers} MoE layers x {self.experts} experts is "
                             f"implausibly large (more than {MAX_EXPERT_FFNS} expert FFNs)")


@functools.lru_cache(maxsize=256)
def _moe_prefix(spec: ModelSpec) -> tuple[int, ...]:
    """prefix[i] = MoE layers among 0..i-1 (the search asks for stage counts many times)."""
    out = [0]
    for i in range(spec.layers):
        out.append(out[-1] + spec.is_moe_layer(i))
    return tuple(out)


def _coerce(value: Any, ftype: Any, where: str) -> Any:
    t = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    if t == "bool":
        if isinstance(value, bool):
            return value
        raise InputError(f"{where} must be true or false, got {value!r}")
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(f"{where} must be an integer, got {value!r}")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} must be a number, got {value!r}")
        return float(value)
    if t == "str":
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {value!r}")
        return value
    if t.startswith("tuple["):
        item = t[len("tuple["):].split(",")[0].strip()
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        if len(value) > 1 << 16:
            raise InputError(f"{where} lists {len(value)} items; implausibly many")
        return tuple(_coerce(v, item, f"{where} item") for v in value)
    return value


MAX_TENSORS = 1 << 20
"""Tensors an explicit inventory (ModelSpec.tensors) may list; DeepSeek-V3 unfused has ~45,000."""


def _tensors_from(value: Any, where: str) -> tuple[Tensor, ...]:
    """ModelSpec.tensors from its to_dict form: a list of [name, shape, role, split, layer(, dtype)]."""
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where} must be a list of [name, shape, role, split, layer] items")
    if len(value) > MAX_TENSORS:
        raise InputError(f"{where} lists {len(value)} tensors; implausibly many")
    out = []
    for i, item in enumerate(value):
        w = f"{where} item {i}"
        if not isinstance(item, (list, tuple)) or len(item) not in (5, 6):
            raise InputError(f"{w} must be [name, shape, role, split, layer] (and a dtype)")
        name, shape, role, split, layer = item[:5]
        dtype = item[5] if len(item) == 6 else None
        if not isinstance(name, str) or not isinstance(role, str):
            raise InputError(f"{w}: name and role must be strings")
        if split not in SPLITS:
            raise InputError(f"{w}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if (not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 8
                or any(isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= 1 << 40
                       for d in shape)):
            raise InputError(f"{w}: shape must be a list of 1 to 8 positive integers")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InputError(f"{w}: layer must be an integer")
        if dtype not in (None, "fp32", "fp16", "bf16"):
            raise InputError(f"{w}: dtype must be fp32, fp16 or bf16")
        out.append(Tensor(name, tuple(shape), role, split, layer, dtype))
    return tuple(out)


def _norm(prefix: str, spec: ModelSpec, layer: int) -> list[Tensor]:
    out = [Tensor(f"{prefix}.weight", (spec.hidden,), "norm", "replicated", layer)]
    if spec.norm == "layernorm":
        out.append(Tensor(f"{prefix}.bias", (spec.hidden,), "norm", "replicated", layer))
    return out


def _linear(name: str, out_f: int, in_f: int, split: str, layer: int, bias: bool,
            role: str = "linear") -> list[Tensor]:
    out = [Tensor(f"{name}.weight", (out_f, in_f), role, split, layer)]
    if bias:
        # Biases of column-parallel (and kv) linears split with their rows; row-parallel biases
        # are added once after the all-reduce, so every rank keeps a full copy.
        out.append(Tensor(f"{name}.bias", (out_f,), "bias",
                          "replicated" if split in ("row", "replicated") else split, layer))
    return out


def _ffn(prefix: str, spec: ModelSpec, width: int, layer: int, role: str,
         bias: bool) -> list[Tensor]:
    h = spec.hidden
    out: list[Tensor] = []
    if spec.gated_ffn:
        out += _linear(f"{prefix}.gate_proj", width, h, "column", layer, bias, role)
    out += _linear(f"{prefix}.up_proj", width, h, "column", layer, bias, role)
    out += _linear(f"{prefix}.down_proj", h, width, "row", layer, bias, role)
    return out


def _attention(prefix: str, spec: ModelSpec, i: int) -> list[Tensor]:
    h = spec.hidden
    if spec.mla:
        out: list[Tensor] = []
        qh = spec.heads * spec.q_head_dim
        if spec.q_lora_rank:
            out += _linear(f"{prefix}.q_a_proj", spec.q_lora_rank, h, "replicated", i, False)
            out.append(Tensor(f"{prefix}.q_a_layernorm.weight", (spec.q_lora_rank,), "norm",
                              "replicated", i))
            out += _linear(f"{prefix}.q_b_proj", qh, spec.q_lora_rank, "column", i, False)
        else:
            out += _linear(f"{prefix}.q_proj", qh, h, "column", i, False)
        out += _linear(f"{prefix}.kv_a_proj_with_mqa", spec.kv_lora_rank + spec.qk_rope_dim, h,
                       "replicated", i, False)
        out.append(Tensor(f"{prefix}.kv_a_layernorm.weight", (spec.kv_lora_rank,), "norm",
                          "replicated", i))
        out += _linear(f"{prefix}.kv_b_proj", spec.heads * (spec.qk_nope_dim + spec.v_head_dim),
                       spec.kv_lora_rank, "column", i, False)
        out += _linear(f"{prefix}.o_proj", h, spec.heads * spec.v_head_dim, "row", i, False)
        return out
    q = spec.heads * spec.head_dim
    kv = spec.kv_heads * spec.head_dim
    out = (_linear(f"{prefix}.q_proj", q, h, "column", i, spec.qkv_bias)
           + _linear(f"{prefix}.k_proj", kv, h, "kv", i, spec.qkv_bias)
           + _linear(f"{prefix}.v_proj", kv, h, "kv", i, spec.qkv_bias)
           + _linear(f"{prefix}.o_proj", h, q, "row", i, spec.o_bias))
    if spec.qk_norm == "rms":  # one (head_dim,) weight shared by every head
        out += [Tensor(f"{prefix}.q_norm.weight", (spec.head_dim,), "norm", "replicated", i),
                Tensor(f"{prefix}.k_norm.weight", (spec.head_dim,), "norm", "replicated", i)]
    if spec.attn_sinks:  # one logit per query head: split with the heads
        out.append(Tensor(f"{prefix}.sinks", (spec.heads,), "sinks", "column", i))
    return out


@functools.lru_cache(maxsize=64)
def inventory(spec: ModelSpec) -> tuple[Tensor, ...]:
    """Every tensor of the model, in checkpoint order (cached; a tuple, so callers cannot edit it)."""
    return tuple(_inventory(spec))


def _inventory(spec: ModelSpec) -> list[Tensor]:
    if spec.tensors:  # an architecture known only to transformers (planner/generic.py)
        return list(spec.tensors)
    L, h = spec.layers, spec.hidden
    out: list[Tensor] = [Tensor("model.embed_tokens.weight", (spec.vocab, h), "embedding",
                                "vocab", -1)]
    if spec.learned_positions:
        out.append(Tensor("model.embed_positions.weight", (spec.learned_positions, h),
                          "position_embedding", "replicated", -1))
    if spec.embed_norm:
        out += _norm("model.embed_layernorm", spec, -1)
    if spec.vision is not None:
        out += vision_inventory(spec.vision)
    for i in range(L):
        p = f"model.layers.{i}"
        out += _norm(f"{p}.input_layernorm", spec, i)
        out += _attention(f"{p}.self_attn", spec, i)
        if spec.sandwich_norms:
            out += _norm(f"{p}.post_self_attn_layernorm", spec, i)
        if not spec.parallel_attn or spec.parallel_norms == 2:
            out += _norm(f"{p}.post_attention_layernorm", spec, i)
        if spec.is_moe_layer(i):
            width = spec.expert_ffn or spec.ffn
            out += _linear(f"{p}.mlp.gate", spec.experts, h, "replicated", i,
                           spec.router_linear_bias, "router")
            if spec.router_bias:
                out.append(Tensor(f"{p}.mlp.gate.e_score_correction_bias", (spec.experts,),
                                  "router", "replicated", i, dtype="fp32"))
            for e in range(spec.experts):
                out += _ffn(f"{p}.mlp.experts.{e}", spec, width, i, "expert",
                            spec.mlp_bias or spec.expert_bias)
            if spec.shared_experts:
                out += _ffn(f"{p}.mlp.shared_experts", spec, spec.shared_width, i, "linear",
                            spec.mlp_bias)
        else:
            out += _ffn(f"{p}.mlp", spec, spec.ffn, i, "linear", spec.mlp_bias)
        if spec.sandwich_norms:
            out += _norm(f"{p}.post_mlp_layernorm", spec, i)
    out += _norm("model.norm", spec, L)
    if not spec.tied_embeddings:
        out.append(Tensor("lm_head.weight", (spec.vocab, h), "lm_head", "vocab", L))
    if spec.lm_head_bias:
        out.append(Tensor("lm_head.bias", (spec.vocab,), "bias", "vocab", L))
    return out


def layer_class(spec: ModelSpec, layer: int) -> str:
    """Which kind of slot a tensor's layer index is: ``pre`` (embeddings), ``post`` (final norm, LM
    head), ``moe`` or ``dense`` (transformer blocks, identical within a kind)."""
    if layer < 0:
        return "pre"
    if layer >= spec.layers:
        return "post"
    return "moe" if spec.is_moe_layer(layer) else "dense"


@functools.lru_cache(maxsize=64)
def tensor_groups(spec: ModelSpec) -> dict[str, tuple[tuple[Tensor, int], ...]]:
    """The inventory folded for the memory model's fast path: for each layer class (see
    layer_class), the tensors of ONE such layer with identical tensors (same role, split, shape and
    dtype: the experts of an MoE layer) merged into (representative, count). Blocks of one class
    hold the same tensors, so a stage's bytes are a count of blocks per class times these."""
    first_of: dict[str, int] = {}
    groups: dict[str, dict[tuple, list]] = {"pre": {}, "dense": {}, "moe": {}, "post": {}}
    for t in inventory(spec):
        cls = layer_class(spec, t.layer)
        if cls in ("dense", "moe"):
            if first_of.setdefault(cls, t.layer) != t.layer:
                continue  # every block of a class repeats the first one
        key = (t.role, t.split, t.shape, t.dtype)
        g = groups[cls]
        if key in g:
            g[key][1] += 1
        else:
            g[key] = [t, 1]
    return {cls: tuple((t, n) for t, n in g.values()) for cls, g in groups.items()}


@functools.lru_cache(maxsize=256)
def windows(spec: ModelSpec) -> tuple[bool, int]:
    """(whether some layer attends to every token, the largest window of a windowed layer or 0)."""
    ws = [spec.window_of(i) for i in range(spec.layers)]
    return (not all(ws), max(ws))


@functools.lru_cache(maxsize=64)
def param_count(spec: ModelSpec) -> int:
    """Parameters of the model, from the inventory."""
    return sum(t.numel for t in inventory(spec))


@functools.lru_cache(maxsize=64)
def active_param_count(spec: ModelSpec) -> int:
    """Parameters one token touches (routed experts counted experts_per_token times)."""
    total = 0
    for t in inventory(spec):
        if t.role == "expert":
            total += t.numel * spec.experts_per_token // spec.experts
        else:
            total += t.numel
    return total
