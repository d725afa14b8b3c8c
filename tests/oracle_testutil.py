"""What transformers itself builds from a config.json: the oracle of test_oracle_transformers.py.

Nothing here reads the planner. Every number comes from the model transformers 5.24 builds on the
meta device (or, for :func:`tiny_forward`, on the CPU with real weights) and from the cache classes
it would fill (``transformers.cache_utils``).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIRS = {"catalog": REPO / "planner" / "catalog" / "configs",
               "tests": REPO / "tests" / "configs"}
"""Every real config.json the oracle test reads, by short folder name."""

TRANSFORMERS_MODEL_TYPE = {"kimi_k2": "deepseek_v3"}
"""Published model types transformers 5.24 does not register, with the type it builds them as
(Kimi-K2 ships remote code for the DeepSeek-V3 layout; planner/catalog/configs/SOURCES.md)."""

VISION_PARTS = ("vision_tower", "vision_model", "multi_modal_projector")
"""Module names of a multimodal model's vision tower and projector in transformers."""


def config_files() -> list[tuple[str, Path]]:
    """(test id, path) of every stored config, sorted: ``catalog/NAME.json``/``tests/NAME.json``."""
    out = []
    for short, folder in CONFIG_DIRS.items():
        for path in sorted(folder.glob("*.json")):
            out.append((f"{short}/{path.name}", path))
    return out


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def for_transformers(cfg: dict) -> dict:
    """The config as transformers is given it (only the model type renamed where it must be)."""
    cfg = copy.deepcopy(cfg)
    cfg["model_type"] = TRANSFORMERS_MODEL_TYPE.get(cfg["model_type"], cfg["model_type"])
    return cfg


def is_multimodal(cfg: dict) -> bool:
    return "vision_config" in cfg


@dataclass(frozen=True)
class LayerKV:
    """What one decoder layer's cache holds per token, as transformers builds it."""

    kind: str
    """full / sliding / chunked, from transformers' resolved layer types."""
    window: int
    """The cache layer's ``sliding_window`` (the chunk on chunked layers); 0 = keeps every token."""
    k: int
    """Key elements per token (all KV heads)."""
    v: int
    """Value elements per token."""

    def tokens_held(self, context: int) -> int:
        """Tokens the cache layer holds after ``context`` tokens: DynamicSlidingWindowLayer keeps
        the last window - 1 (checked against a real forward by the tiny-model test)."""
        return context if not self.window else min(context, self.window - 1)


@dataclass(frozen=True)
class Built:
    numel: dict
    """Name -> elements of every parameter and persistent buffer (the state dict), tied once."""
    params: int
    """Unique parameters (``model.parameters()``)."""
    buffers: int
    """Persistent buffers that are not parameters (DeepSeek's e_score_correction_bias)."""
    text: int
    """Parameters + persistent buffers outside the vision tower and projector."""
    layers: tuple
    """LayerKV of each decoder layer."""
    mla: dict
    """For MLA attention: num_heads, kv_lora_rank, qk_rope_head_dim of the attention module;
    else {}."""

    @property
    def total(self) -> int:
        return self.params + self.buffers


_KIND = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked"}


def decoder_of(model):
    """The module holding the decoder layers (text model of a multimodal model)."""
    dec = model.get_decoder()
    while not hasattr(dec, "layers"):
        dec = dec.model
    return dec


def attention_kv(attn) -> tuple[int, int, dict]:
    """(key, value) elements per token one attention module puts in its cache, from its weights."""
    if hasattr(attn, "kv_b_proj"):
        # MLA: transformers 5.24 caches the compressed latent (modeling_deepseek_v3.py: "Cache
        # read / write is performed while latent KV is still compressed"): as one-head "keys" the
        # normed kv_lora_rank latent, as "values" the shared RoPE key (kv_a_proj_with_mqa's rest).
        latent = attn.kv_a_layernorm.weight.shape[0]
        mla = {"num_heads": attn.num_heads, "kv_lora_rank": latent,
               "qk_rope_head_dim": attn.kv_a_proj_with_mqa.weight.shape[0] - latent}
        return latent, mla["qk_rope_head_dim"], mla
    if hasattr(attn, "k_proj"):
        return attn.k_proj.weight.shape[0], attn.v_proj.weight.shape[0], {}
    if hasattr(attn, "qkv_proj"):  # Phi-3: [q | k | v] rows, q as wide as o_proj's input
        kv = (attn.qkv_proj.weight.shape[0] - attn.o_proj.weight.shape[1]) // 2
        return kv, kv, {}
    raise AssertionError(f"oracle does not know the attention module {type(attn).__name__}")


def layer_kvs(model) -> tuple[tuple[LayerKV, ...], dict]:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer, get_layer_types_and_kwargs

    text_cfg = model.config.get_text_config(decoder=True)
    types, _ = get_layer_types_and_kwargs(text_cfg)
    cache = DynamicCache(config=model.config)  # what forward()/generate() would fill
    dec = decoder_of(model)
    assert len(types) == len(cache.layers) == len(dec.layers)
    out, mla = [], {}
    for t, cl, layer in zip(types, cache.layers, dec.layers):
        k, v, mla = attention_kv(layer.self_attn)
        window = cl.sliding_window if isinstance(cl, DynamicSlidingWindowLayer) else 0
        out.append(LayerKV(_KIND[t], window, k, v))
    return tuple(out), mla


def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()


def build_meta(cfg: dict):
    """transformers' model of ``cfg`` on the meta device (with the vision tower when it has one)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    _quiet()
    hf = AutoConfig.for_model(**for_transformers(cfg))
    cls = AutoModelForImageTextToText if is_multimodal(cfg) else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(hf)


@functools.lru_cache(maxsize=None)
def built(path: Path) -> Built:
    """The oracle's numbers for one config file (built once per session)."""
    model = build_meta(load(path))
    params = {id(p): p.numel() for p in model.parameters()}
    names: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():  # named_parameters() lists a tied weight once
        names[name] = p.numel()
        seen.add(id(p))
    state = model.state_dict()
    buffers = 0
    for name, b in model.named_buffers():
        if name in state and id(b) not in seen:  # persistent: part of the checkpoint
            names[name] = b.numel()
            buffers += b.numel()
    text = sum(n for name, n in names.items() if not any(v in name for v in VISION_PARTS))
    layers, mla = layer_kvs(model)
    return Built(names, sum(params.values()), buffers, text, layers, mla)


_LAYER = re.compile(r"layers\.(\d+)\.([A-Za-z_]+)")


def _part(module: str) -> str:
    """A decoder layer's top module as one of attention / mlp / norms (names differ between
    transformers and the published checkpoints the planner lists: post_feedforward_layernorm vs
    post_mlp_layernorm, feed_forward vs mlp)."""
    if "norm" in module:
        return "norms"
    if "attn" in module or "attention" in module:
        return "attention"
    if module in ("mlp", "feed_forward", "block_sparse_moe"):
        return "mlp"
    return module


def coarse(names: dict) -> dict:
    """Elements grouped so that transformers' and the planner's names meet: ('layer N', attention
    / mlp / norms) for decoder layers, 'vision' for the tower and projector, else the name without
    its model./language_model. prefix."""
    out: dict[str, int] = {}
    for name, n in names.items():
        if any(v in name for v in VISION_PARTS) or name.startswith("vision"):
            key = "vision"
        elif m := _LAYER.search(name):
            key = f"layer {m.group(1)} {_part(m.group(2))}"
        else:
            key = re.sub(r"^(model\.)?(language_model\.)?(model\.)?", "", name)
        out[key] = out.get(key, 0) + n
    return out


def diff(planner_names: dict, oracle_names: dict, limit: int = 12) -> str:
    """Lines 'group: planner N, transformers M' for the groups whose element counts differ."""
    a, b = coarse(planner_names), coarse(oracle_names)
    keys = sorted(set(a) | set(b), key=lambda k: (len(k), k))
    lines = [f"  {k}: planner {a.get(k, 0):,}, transformers {b.get(k, 0):,}"
             for k in keys if a.get(k, 0) != b.get(k, 0)]
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


# -- a tiny model of the same architecture, run for real -------------------------------------------

TINY_WINDOW = 8
"""Window (and chunk) of the tiny models: 20 prompt tokens overflow it."""
TINY_TOKENS = 20

_SIZES = {
    "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
    "intermediate_size_mlp": 96, "shared_expert_intermediate_size": 48, "vocab_size": 128,
    "head_dim": 16, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
    "v_head_dim": 16, "query_pre_attn_scalar": 16,
}
_ALWAYS = ("hidden_size", "intermediate_size", "vocab_size")
"""Sizes set even where the config leaves them to transformers' (large) defaults."""
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")
_LAYER_LISTS = ("layer_types", "no_rope_layers")


def _resolved(text: dict):
    """transformers' config object of a text config (its defaults filled in)."""
    from transformers import AutoConfig

    _quiet()
    return AutoConfig.for_model(**for_transformers(text))


def tiny_text_config(text: dict) -> dict:
    """A few-layer, 64-wide copy of a text config: every structural field (layer-type pattern,
    QK-norm, sinks, softcaps, shared experts, dense first layers, biases, partial RoPE) kept."""
    t = copy.deepcopy(text)
    t.pop("quantization_config", None)
    resolved = _resolved(text)
    for k, v in _SIZES.items():
        if t.get(k) is not None or k in _ALWAYS:
            t[k] = v
    if t.get("pad_token_id") is not None:
        t["pad_token_id"] = 0
    heads, kv = resolved.num_attention_heads, getattr(resolved, "num_key_value_heads", None)
    t["num_attention_heads"] = 4
    if kv is not None:
        t["num_key_value_heads"] = 4 if kv >= heads else (1 if kv == 1 else 2)
    if "kv_lora_rank" not in t:
        t["head_dim"] = 16
    if t.get("q_lora_rank"):
        t["q_lora_rank"] = 24
    for k in _EXPERTS:
        if t.get(k):
            t[k] = 4
    if t.get("num_experts_per_tok"):
        t["num_experts_per_tok"] = min(2, t["num_experts_per_tok"])
    if t.get("n_group"):
        t["n_group"], t["topk_group"] = (2, 1) if t["n_group"] > 1 else (1, 1)
    if t.get("first_k_dense_replace"):
        t["first_k_dense_replace"] = 1
    for k in ("sliding_window", "sliding_window_size"):
        if t.get(k):
            t[k] = TINY_WINDOW
    if t.get("attention_chunk_size"):
        t["attention_chunk_size"] = TINY_WINDOW
    # Enough layers to show the pattern: up to the first layer whose type (as transformers
    # resolves it for the real config) differs from layer 0, and two past the dense first layers.
    types = list(getattr(resolved, "layer_types", None) or ["full_attention"])
    other = [i for i, x in enumerate(types) if x != types[0]]
    n = max(3, (other[0] + 1) if other else 0, (t.get("first_k_dense_replace") or 0) + 2)
    if n < (t.get("num_hidden_layers") or n):
        t["num_hidden_layers"] = n
    for k in _LAYER_LISTS:
        if isinstance(t.get(k), list):
            t[k] = t[k][:t["num_hidden_layers"]]
    if isinstance(t.get("mlp_only_layers"), list):
        t["mlp_only_layers"] = [i for i in t["mlp_only_layers"] if i < t["num_hidden_layers"]]
    if isinstance(t.get("moe_layers"), list):
        t["moe_layers"] = [i for i in t["moe_layers"] if i < t["num_hidden_layers"]]
    if "max_window_layers" in t:
        t["max_window_layers"] = min(t["max_window_layers"], t["num_hidden_layers"])
    return t


def text_of(cfg: dict) -> dict:
    return cfg["text_config"] if is_multimodal(cfg) else cfg


def tiny_config(cfg: dict) -> dict:
    """The whole config with its text model made tiny (a vision tower is left as published:
    it holds no KV cache)."""
    if is_multimodal(cfg):
        return {**copy.deepcopy(cfg), "text_config": tiny_text_config(cfg["text_config"])}
    return tiny_text_config(cfg)


@dataclass(frozen=True)
class CachedLayer:
    tokens: int
    """Tokens the layer's cache holds after the forward (keys.shape[-2])."""
    k: int
    """Key elements per token: heads x head dim of the cached keys."""
    v: int


def tiny_forward(cfg: dict) -> tuple[tuple[CachedLayer, ...], tuple[LayerKV, ...]]:
    """Run the tiny text model of ``cfg`` on ``TINY_TOKENS`` tokens in float32 on the CPU with
    ``use_cache=True``; what its returned cache holds per layer, and the oracle's LayerKV read from
    that same model's modules (so the meta-device reading can be checked against a real run)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet()
    text = for_transformers(tiny_text_config(text_of(for_transformers(cfg))))
    torch.manual_seed(0)
    hf = AutoConfig.for_model(**text)
    hf._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32).eval()
    ids = torch.randint(0, text["vocab_size"], (1, TINY_TOKENS))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    got = []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        assert k.shape[-2] == v.shape[-2]
        got.append(CachedLayer(k.shape[-2], k.shape[1] * k.shape[3], v.shape[1] * v.shape[3]))
    return tuple(got), layer_kvs(model)[0]
