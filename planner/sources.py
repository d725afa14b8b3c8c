"""Where a model spec comes from: the catalog, a Hugging Face ``config.json``, or a checkpoint's headers.

:func:`resolve` takes what the user typed for ``--model`` (a catalog name or alias, a config.json, a
folder, a safetensors file or a GGUF file) and returns a :class:`ModelSource`: the spec, where it came
from and, for checkpoints, the header's own tensor list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from planner.errors import InputError
from planner.spec import ModelSpec
from planner.units import as_int

MAX_CONFIG_BYTES = 16 << 20


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``."""

    spec: ModelSpec
    kind: str
    """catalog, config, safetensors, safetensors-sharded or gguf."""
    path: str
    """Catalog name, or the path given."""
    checkpoint: Any = None
    """planner.checkpoint.Checkpoint for checkpoint sources."""


# -- config.json ---------------------------------------------------------------------------------

def load_config_file(path: str) -> dict:
    """Read and parse a config.json, with one clear error for every way it can be wrong."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise InputError(f"{path}: {size} bytes is too large for a config.json")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # never more than the limit, even if it grew
        if len(raw) > MAX_CONFIG_BYTES:
            raise InputError(f"{path}: more than {MAX_CONFIG_BYTES} bytes is too large for a "
                             "config.json")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text, not a config.json") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                         f"{e.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply for a config.json") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's 4300-digit limit
        raise InputError(f"{path}: unreadable JSON value ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _get(cfg: dict, where: str, *keys: str, default: Any = None, required: bool = True) -> Any:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    if required and default is None:
        raise InputError(f"{where}: missing {keys[0]!r}")
    return default


def _int(cfg: dict, where: str, key: str, value: Any) -> int:
    """An integer field that the code below does arithmetic on (before ModelSpec validates it)."""
    n = as_int(value)
    if n is None:
        raise InputError(f"{where}: {key!r} must be an integer, got {value!r}")
    return n


def _bool(cfg: dict, where: str, key: str, default: bool) -> bool:
    """An optional true/false field; null means the default."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _float(cfg: dict, where: str, key: str, default: float) -> float:
    """An optional number field; null means the default."""
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


_LLAMA_LIKE = ("llama", "mistral", "qwen2", "phi3", "mixtral", "deepseek_v3", "deepseek_v2",
               "qwen3", "qwen3_moe", "gemma2", "gemma3_text", "gpt_oss", "llama4_text", "phimoe",
               "glm4", "glm4_moe", "ministral3")
"""Model types read by the one decoder-block parser below (RoPE, RMSNorm or LayerNorm, gated FFN,
GQA or MLA, optional MoE)."""

_MULTIMODAL = {"gemma3": "gemma3_text", "llama4": "llama4_text", "mistral3": "mistral"}
"""Multimodal model types -> the model type of their ``text_config`` (planned as the text model,
with the vision tower and projector counted as weights)."""

_ALIASES = {"kimi_k2": "deepseek_v3"}
"""Model types whose config.json names a supported architecture under another name (Kimi-K2's
config.json: "architectures": ["DeepseekV3ForCausalLM"])."""

_FAMILY_OF = {"ministral3": "mistral"}
"""Model types that name their tensors as another family does."""

_SUPPORTED = (*_LLAMA_LIKE, *_MULTIMODAL, *_ALIASES, "opt", "gpt2", "bloom", "falcon", "RefinedWeb",
              "RefinedWebModel", "glm")

# Defaults of fields that published configs leave out, as transformers 5.24's configuration_*.py
# classes set them (the model is built with these when the field is absent).
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": {"vocab_size": 151936, "head_dim": 128, "max_position_embeddings": 32768},
    "qwen3_moe": {"vocab_size": 151936, "max_position_embeddings": 32768,
                  "decoder_sparse_step": 1, "moe_intermediate_size": 768,
                  "num_experts_per_tok": 8, "num_experts": 128},
    "gemma2": {"vocab_size": 256000, "head_dim": 256, "max_position_embeddings": 8192,
               "tie_word_embeddings": True, "sliding_window": 4096,
               "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    "gemma3_text": {"vocab_size": 262208, "head_dim": 256, "max_position_embeddings": 131072,
                    "num_attention_heads": 8, "num_key_value_heads": 4,
                    "tie_word_embeddings": True, "sliding_window": 4096, "rope_theta": 1e6,
                    "sliding_window_pattern": 6},
    "gpt_oss": {"vocab_size": 201088, "head_dim": 64, "sliding_window": 128,
                "max_position_embeddings": 131072, "num_experts_per_tok": 4,
                "num_local_experts": 128, "attention_bias": True, "rope_theta": 150000.0},
    "llama4_text": {"vocab_size": 202048, "head_dim": 128, "max_position_embeddings": 131072,
                    "num_experts_per_tok": 1, "num_local_experts": 16,
                    "interleave_moe_layer_step": 1, "use_qk_norm": True,
                    "attention_chunk_size": 8192, "no_rope_layer_interval": 4,
                    "rope_theta": 500000.0, "rms_norm_eps": 1e-5},
    "phimoe": {"vocab_size": 32064, "max_position_embeddings": 131072, "num_experts_per_tok": 2,
               "num_local_experts": 16, "rms_norm_eps": 1e-5},
    "deepseek_v2": {"vocab_size": 102400, "q_lora_rank": 1536, "kv_lora_rank": 512,
                    "n_routed_experts": 64, "n_shared_experts": 2, "qk_nope_head_dim": 128,
                    "qk_rope_head_dim": 64, "v_head_dim": 128, "moe_intermediate_size": 1407,
                    "first_k_dense_replace": 0, "topk_method": "greedy"},
    "glm": {"vocab_size": 151552, "head_dim": 128, "max_position_embeddings": 131072,
            "attention_bias": True, "rms_norm_eps": 1.5625e-07},
    "glm4": {"vocab_size": 151552, "head_dim": 128, "max_position_embeddings": 131072,
             "attention_bias": True, "rms_norm_eps": 1.5625e-07},
    "glm4_moe": {"vocab_size": 151552, "max_position_embeddings": 131072,
                 "moe_intermediate_size": 1408, "num_experts_per_tok": 8, "n_shared_experts": 1,
                 "n_routed_experts": 128, "first_k_dense_replace": 1, "use_qk_norm": False},
    "mistral": {"vocab_size": 32000, "max_position_embeddings": 131072},
    "ministral3": {"vocab_size": 131072, "head_dim": 128, "max_position_embeddings": 262144,
                   "rms_norm_eps": 1e-5},
}

_TEXT_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
"""Fields a ``text_config`` must give itself unless its config class defaults them (gemma-3-4b's
published text_config leaves num_attention_heads to Gemma3TextConfig's 8): a text model without
its widths is not one."""

_LAYER_TYPE_NAMES = {"full_attention": "full", "sliding_attention": "sliding",
                     "chunked_attention": "chunked", "full": "full", "sliding": "sliding",
                     "chunked": "chunked"}


def _text_config(cfg: dict, mt: str, where: str) -> tuple[dict, str]:
    """The text model's config of a multimodal config.json, with its type's defaults filled in."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise InputError(f"{where}: a {mt!r} config needs a 'text_config' object")
    text_mt = text.get("model_type") or _MULTIMODAL[mt]
    defaults = _TEXT_DEFAULTS.get(text_mt, {})
    missing = [k for k in _TEXT_REQUIRED if text.get(k) is None and k not in defaults]
    if missing:
        raise InputError(f"{where}: text_config lacks {', '.join(repr(k) for k in missing)}")
    if text_mt not in _LLAMA_LIKE:
        raise InputError(f"{where}: text_config model_type {text_mt!r} is not supported")
    merged = dict(text)
    for k in ("torch_dtype", "dtype", "tie_word_embeddings"):
        if merged.get(k) is None and cfg.get(k) is not None:
            merged[k] = cfg[k]
    merged["model_type"] = text_mt
    return merged, text_mt


def _rope_theta(cfg: dict, where: str, default: float) -> float:
    """rope_theta at the top level (older configs), or in transformers 5's rope_parameters
    (flat, or per layer type as Gemma 3 writes it: the full-attention layers' base)."""
    if cfg.get("rope_theta") is not None:
        return _float(cfg, where, "rope_theta", default)
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        inner = rp.get("full_attention") if isinstance(rp.get("full_attention"), dict) else rp
        if inner.get("rope_theta") is not None:
            return _float(inner, f"{where}: rope_parameters", "rope_theta", default)
    return default


def _layer_types(cfg: dict, where: str, layers: int, mt: str) -> tuple[str, ...]:
    """Attention kind per layer: config.json's own ``layer_types``, else the pattern the model
    type's config class derives (transformers 5.24 configuration_*.py)."""
    lt = cfg.get("layer_types")
    if lt is not None:
        if not isinstance(lt, list) or not all(isinstance(x, str) for x in lt):
            raise InputError(f"{where}: 'layer_types' must be a list of strings")
        bad = [x for x in lt if x not in _LAYER_TYPE_NAMES]
        if bad:
            raise InputError(f"{where}: unknown layer kind {bad[0]!r} in layer_types; known: "
                             f"{', '.join(k for k in _LAYER_TYPE_NAMES if '_' in k)}")
        return tuple(_LAYER_TYPE_NAMES[x] for x in lt)
    if mt in ("gemma2", "gpt_oss"):  # sliding, full, sliding, full, ...
        return tuple("sliding" if (i + 1) % 2 else "full" for i in range(layers))
    if mt == "gemma3_text":
        n = _int(cfg, where, "sliding_window_pattern", cfg.get("sliding_window_pattern") or 6)
        if n < 1:
            raise InputError(f"{where}: 'sliding_window_pattern' must be at least 1")
        return tuple("sliding" if (i + 1) % n else "full" for i in range(layers))
    if mt == "llama4_text":
        rope = _llama4_rope_layers(cfg, where, layers)
        chunk = cfg.get("attention_chunk_size")
        return tuple("chunked" if r and chunk else "full" for r in rope)
    if mt in ("qwen2", "qwen3", "qwen3_moe") and _bool(cfg, where, "use_sliding_window", False) \
            and cfg.get("sliding_window"):
        first = _int(cfg, where, "max_window_layers", cfg.get("max_window_layers", layers))
        return tuple("sliding" if i >= first else "full" for i in range(layers))
    return ()


def _llama4_rope_layers(cfg: dict, where: str, layers: int) -> list[int]:
    """Llama 4's no_rope_layers: 1 = the layer applies RoPE, 0 = NoPE (every 4th by default)."""
    nr = cfg.get("no_rope_layers")
    if nr:
        if not isinstance(nr, list) or len(nr) != layers or any(x not in (0, 1) for x in nr):
            raise InputError(f"{where}: 'no_rope_layers' must list 0 or 1 for each of the "
                             f"{layers} layers")
        return list(nr)
    every = _int(cfg, where, "no_rope_layer_interval", cfg["no_rope_layer_interval"])
    if every < 1:
        raise InputError(f"{where}: 'no_rope_layer_interval' must be at least 1")
    return [int((i + 1) % every != 0) for i in range(layers)]


def _int_list(cfg: dict, where: str, key: str) -> list[int]:
    v = cfg.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                          for x in v):
        raise InputError(f"{where}: {key!r} must be a list of layer indices")
    return v


def _llama_like(cfg: dict, mt: str, where: str, d: dict[str, Any]) -> None:
    """Fields of the shared decoder-block architectures, each read from its config key."""
    cfg = {**_TEXT_DEFAULTS.get(mt, {}), **cfg}  # an explicit null overrides, as in transformers
    g = lambda *k, **kw: _get(cfg, where, *k, **kw)  # noqa: E731
    b = lambda k, default: _bool(cfg, where, k, default)  # noqa: E731
    layers = _int(cfg, where, "num_hidden_layers", g("num_hidden_layers"))
    heads = g("num_attention_heads")
    kv = g("num_key_value_heads", default=heads)
    d.update(family=_FAMILY_OF.get(mt, mt.removesuffix("_text")), layers=layers, hidden=g("hidden_size"),
             heads=heads, kv_heads=kv, ffn=g("intermediate_size"), vocab=g("vocab_size"),
             tied_embeddings=b("tie_word_embeddings", False),
             max_context=g("max_position_embeddings", default=2048),
             rope_theta=_rope_theta(cfg, where, 10000.0),
             norm_eps=_float(cfg, where, "rms_norm_eps", 1e-6))
    if cfg.get("head_dim"):
        d["head_dim"] = cfg["head_dim"]
    attn_bias = b("attention_bias", False)
    if mt == "qwen2":
        d["qkv_bias"] = True
    elif mt in ("glm4", "glm4_moe"):  # q/k/v biases, no o_proj bias (modeling_glm4*.py)
        d["qkv_bias"] = attn_bias
    elif attn_bias:
        d["qkv_bias"] = d["o_bias"] = True
    if b("mlp_bias", False):
        d["mlp_bias"] = True
    # attention kinds per layer
    lt = _layer_types(cfg, where, layers, mt)
    sw = cfg.get("sliding_window")
    if lt:
        d["layer_types"] = list(lt)
        if "sliding" in lt:
            d["sliding_window"] = _int(cfg, where, "sliding_window", sw or 0)
        if "chunked" in lt:
            d["attention_chunk"] = _int(cfg, where, "attention_chunk_size",
                                        cfg.get("attention_chunk_size") or 0)
    elif sw and mt in ("mistral", "mixtral", "phi3", "phimoe", "llama"):
        d["sliding_window"] = _int(cfg, where, "sliding_window", sw)
    # norms, softcaps, embeddings
    if mt in ("gemma2", "gemma3_text"):
        d.update(sandwich_norms=True, norm_offset=True, embed_scale=True, activation="gelu",
                 attn_softcap=_float(cfg, where, "attn_logit_softcapping", 0.0),
                 final_softcap=_float(cfg, where, "final_logit_softcapping", 0.0))
    if mt == "glm4":
        d["sandwich_norms"] = True
    if mt in ("qwen3", "qwen3_moe", "gemma3_text") or (
            mt == "glm4_moe" and b("use_qk_norm", False)):
        d["qk_norm"] = "rms"
    if mt == "phimoe":
        d.update(norm="layernorm", lm_head_bias=b("lm_head_bias", False))
    if mt == "gpt_oss":
        d["attn_sinks"] = True
    if mt == "llama4_text":
        rope = _llama4_rope_layers(cfg, where, layers)
        d["nope_layers"] = [i for i, r in enumerate(rope) if not r]
        if b("use_qk_norm", True):
            d["qk_norm"] = "l2"
    # mixture of experts
    if mt in ("mixtral", "phimoe"):
        d.update(experts=g("num_local_experts"), experts_per_token=g("num_experts_per_tok"),
                 expert_ffn=g("intermediate_size"))
    elif mt == "qwen3_moe":
        # published configs write num_experts; transformers 5.24's save_pretrained writes
        # num_local_experts (its attribute name): an explicit one comes before the default
        d.update(experts=g("num_local_experts", "num_experts"),
                 experts_per_token=g("num_experts_per_tok"),
                 expert_ffn=g("moe_intermediate_size"),
                 moe_step=_int(cfg, where, "decoder_sparse_step", g("decoder_sparse_step")),
                 mlp_only_layers=_int_list(cfg, where, "mlp_only_layers"))
    elif mt == "gpt_oss":
        d.update(experts=g("num_local_experts"),
                 experts_per_token=g("num_experts_per_tok", "experts_per_token"),
                 expert_ffn=g("intermediate_size"), router_linear_bias=True, expert_bias=True,
                 routing="softmax_topk")
    elif mt == "llama4_text":
        ffn_mlp = g("intermediate_size_mlp", default=None, required=False)
        step = _int(cfg, where, "interleave_moe_layer_step", g("interleave_moe_layer_step"))
        d.update(experts=g("num_local_experts"), experts_per_token=g("num_experts_per_tok"),
                 expert_ffn=g("intermediate_size"), shared_experts=1,
                 shared_expert_ffn=g("intermediate_size"), ffn=ffn_mlp or g("intermediate_size"),
                 routing="sigmoid")
        moe_layers = cfg.get("moe_layers")
        if moe_layers is not None:  # an explicit list: the rest are dense
            listed = set(_int_list(cfg, where, "moe_layers"))
            d["mlp_only_layers"] = [i for i in range(layers) if i not in listed]
        else:
            d["moe_step"] = step
    elif mt in ("deepseek_v2", "deepseek_v3", "glm4_moe"):
        d.update(experts=g("n_routed_experts"), experts_per_token=g("num_experts_per_tok"),
                 shared_experts=g("n_shared_experts", default=0, required=False),
                 expert_ffn=g("moe_intermediate_size"),
                 dense_layers=g("first_k_dense_replace", default=0, required=False),
                 mtp_layers=g("num_nextn_predict_layers", default=0, required=False))
        if mt == "glm4_moe" or cfg.get("topk_method", "noaux_tc") == "noaux_tc":
            d["router_bias"] = True  # mlp.gate.e_score_correction_bias
        if mt == "glm4_moe" or cfg.get("scoring_func", "softmax" if mt == "deepseek_v2"
                                       else "sigmoid") == "sigmoid":
            d["routing"] = "sigmoid"
        freq = cfg.get("moe_layer_freq", 1)
        if freq not in (1, None):
            d["moe_step"] = _int(cfg, where, "moe_layer_freq", freq)
    if mt in ("deepseek_v2", "deepseek_v3"):
        d.update(q_lora_rank=cfg.get("q_lora_rank") or 0, kv_lora_rank=g("kv_lora_rank"),
                 qk_nope_dim=g("qk_nope_head_dim"), qk_rope_dim=g("qk_rope_head_dim"),
                 v_head_dim=g("v_head_dim"), head_dim=g("v_head_dim"))


def spec_from_config(cfg: dict, name: str, where: str) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json mapping."""
    mt = cfg.get("model_type")
    if not isinstance(mt, str):
        raise InputError(f"{where}: no 'model_type' field; is this a Hugging Face config.json?")
    if mt not in _SUPPORTED:
        # The long tail: an architecture the planner has no features for is planned from
        # transformers' own model of it when transformers knows it (planner/generic.py), else
        # refused naming what the planner supports and what to install.
        from planner.generic import spec_from_transformers

        try:
            return spec_from_transformers(cfg, name, where)
        except InputError as e:
            raise InputError(f"{e} (model_type {mt!r} is not supported natively; the planner's "
                             f"own architectures: {', '.join(_SUPPORTED)})") from None
    mt = _ALIASES.get(mt, mt)
    vision = None
    if mt in _MULTIMODAL:
        from planner.vision import vision_spec_from_config

        vision = vision_spec_from_config(cfg, where)
        cfg, mt = _text_config(cfg, mt, where)
    if mt == "glm" and "num_hidden_layers" in cfg:
        mt = "glm4_native"  # transformers' GLM-4 (glm-4-9b-chat-hf), not GLM-130B's layout
    g = lambda *k, **kw: _get(cfg, where, *k, **kw)  # noqa: E731
    gi = lambda *k, **kw: _int(cfg, where, k[0], g(*k, **kw))  # noqa: E731
    b = lambda k, default: _bool(cfg, where, k, default)  # noqa: E731
    d: dict[str, Any] = {"name": name, "source": f"config.json ({where})"}
    dt = cfg.get("torch_dtype") or cfg.get("dtype")
    d["dtype"] = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(
        dt if isinstance(dt, str) else "", "fp16")
    if vision is not None:
        d["vision"] = vision.to_dict()
    if mt in _LLAMA_LIKE:
        _llama_like(cfg, mt, where, d)
    elif mt == "glm4_native":
        _llama_like({**_TEXT_DEFAULTS["glm"], **cfg}, "glm4", where, d)
        d.update(family="glm4", sandwich_norms=False)
    elif mt == "opt":
        if cfg.get("word_embed_proj_dim", cfg.get("hidden_size")) != cfg.get("hidden_size"):
            raise InputError(f"{where}: OPT with word_embed_proj_dim != hidden_size (opt-350m's "
                             "project_in/out) is not supported")
        if not b("do_layer_norm_before", True):
            raise InputError(f"{where}: OPT with post-layer-norm (opt-350m) is not supported")
        mp = gi("max_position_embeddings")
        bias = b("enable_bias", True)
        d.update(family="opt", layers=g("num_hidden_layers"), hidden=g("hidden_size"),
                 heads=g("num_attention_heads"), ffn=g("ffn_dim"), vocab=g("vocab_size"),
                 gated_ffn=False, activation="relu", norm="layernorm",
                 tied_embeddings=b("tie_word_embeddings", True),
                 qkv_bias=bias, o_bias=bias, mlp_bias=bias,
                 learned_positions=mp + 2, position_offset=2, max_context=mp)
    elif mt == "gpt2":
        n_pos = gi("n_positions")
        h = gi("n_embd")
        d.update(family="gpt2", layers=g("n_layer"), hidden=h, heads=g("n_head"),
                 ffn=cfg.get("n_inner") or 4 * h, vocab=g("vocab_size"), gated_ffn=False,
                 activation="gelu", norm="layernorm",
                 tied_embeddings=b("tie_word_embeddings", True),
                 qkv_bias=True, o_bias=True, mlp_bias=True, learned_positions=n_pos,
                 max_context=n_pos, norm_eps=_float(cfg, where, "layer_norm_epsilon", 1e-5))
    elif mt == "bloom":
        h = gi("hidden_size", "n_embed")
        d.update(family="bloom", layers=g("n_layer", "num_hidden_layers"), hidden=h,
                 heads=g("n_head", "num_attention_heads"), ffn=4 * h, vocab=g("vocab_size"),
                 gated_ffn=False, activation="gelu", norm="layernorm",
                 tied_embeddings=b("tie_word_embeddings", True), qkv_bias=True,
                 o_bias=True, mlp_bias=True, embed_norm=True, alibi=True,
                 max_context=cfg.get("seq_length") or 2048)
    elif mt in ("falcon", "RefinedWeb", "RefinedWebModel"):
        h = gi("hidden_size")
        heads = g("num_attention_heads", "n_head")
        new_arch = b("new_decoder_architecture", mt == "RefinedWeb")
        multi_query = b("multi_query", True)
        kv = g("num_kv_heads", "n_head_kv", default=None, required=False)
        if kv is None:
            kv = 1 if (multi_query and not new_arch) else heads
        bias = b("bias", False)
        if not b("parallel_attn", True):
            raise InputError(f"{where}: Falcon without parallel_attn is not supported")
        if b("alibi", False):
            raise InputError(f"{where}: Falcon with ALiBi is not supported")
        d.update(family="falcon", layers=g("num_hidden_layers", "n_layer"), hidden=h, heads=heads,
                 kv_heads=kv, ffn=cfg.get("ffn_hidden_size") or 4 * h, vocab=g("vocab_size"),
                 gated_ffn=False, activation="gelu", gelu_approx="none", norm="layernorm",
                 tied_embeddings=b("tie_word_embeddings", True),
                 qkv_bias=bias, o_bias=bias, mlp_bias=bias, parallel_attn=True,
                 parallel_norms=2 if (new_arch and cfg.get("num_ln_in_parallel_attn", 2) == 2) else 1,
                 max_context=cfg.get("max_position_embeddings") or 2048,
                 rope_theta=_float(cfg, where, "rope_theta", 10000.0))
    elif mt == "glm":
        d.update(family="glm", layers=g("num_layers"), hidden=g("hidden_size"),
                 heads=g("num_attention_heads"), ffn=g("inner_hidden_size"), vocab=g("vocab_size"),
                 activation="gelu", gelu_approx="none", norm="layernorm", tied_embeddings=True,
                 qkv_bias=True, o_bias=True, mlp_bias=True,
                 max_context=cfg.get("max_sequence_length") or 2048)
    return ModelSpec.from_dict(d, where)


# -- GGUF metadata -------------------------------------------------------------------------------

_GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "phi3": "phi3",
              "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "gemma2": "gemma2", "gemma3": "gemma3",
              "gpt-oss": "gpt_oss", "llama4": "llama4", "deepseek2": "deepseek_v2",
              "glm4": "glm4", "glm4moe": "glm4_moe", "phimoe": "phimoe", "mistral3": "mistral3"}
"""GGUF ``general.architecture`` (as llama.cpp names it) -> family."""

# Per-layer attention patterns llama.cpp applies by architecture rather than reading from the file
# (src/llama-model.cpp load_hparams, ggml-org/llama.cpp @a5410f04: gemma2 set_swa_pattern(2),
# gemma3 set_swa_pattern(6), gpt-oss pattern 2, llama4 chunked 8192 with pattern 4 and a NoPE layer
# every 4th). set_swa_pattern(n): layer i is windowed unless (i + 1) % n == 0.
_GGUF_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gpt-oss": 2, "llama4": 4}
_GGUF_GATING = {1: "softmax", 2: "sigmoid", 3: "softmax_topk"}
"""llama.cpp's expert_gating_func: softmax, sigmoid, softmax_weight (softmax over the top k)."""


def spec_from_gguf(meta: dict, tensor_names: set[str], name: str, where: str) -> ModelSpec:
    """A ModelSpec from GGUF key/value metadata and the file's tensor names.

    Widths and counts come from the metadata; a feature whose tensors are in the file (QK-norm
    weights, post-norms, attention sinks, expert and router biases, shared experts, a query
    low-rank projection, an LM-head bias) is read from the tensor names."""
    arch = meta.get("general.architecture")
    if arch not in _GGUF_ARCH:
        raise InputError(f"{where}: GGUF architecture {arch!r} is not supported; supported: "
                         f"{', '.join(_GGUF_ARCH)}")

    def k(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise InputError(f"{where}: GGUF metadata lacks {arch}.{key}")
        if isinstance(v, dict):  # an array value (per-layer counts): one value for every layer
            raise InputError(f"{where}: GGUF {arch}.{key} varies per layer; not supported")
        return v

    has = lambda t: t in tensor_names  # noqa: E731
    heads = k("attention.head_count")
    hidden = k("embedding_length")
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = tokens.get("len") if isinstance(tokens, dict) else None
    if not isinstance(vocab, int):
        raise InputError(f"{where}: GGUF metadata gives no vocabulary size")
    layers = k("block_count")
    d: dict[str, Any] = {
        "name": name, "family": _GGUF_ARCH[arch], "source": f"GGUF metadata ({where})",
        "layers": layers, "hidden": hidden, "heads": heads,
        "kv_heads": k("attention.head_count_kv", heads), "ffn": k("feed_forward_length"),
        "vocab": vocab, "max_context": k("context_length", 2048),
        "tied_embeddings": not has("output.weight"),
        "rope_theta": float(k("rope.freq_base", 10000.0)),
        "norm_eps": float(k("attention.layer_norm_rms_epsilon",
                            k("attention.layer_norm_epsilon", 1e-5))),
    }
    key_len = meta.get(f"{arch}.attention.key_length")
    if isinstance(key_len, int) and isinstance(heads, int) and heads and key_len != hidden // heads:
        d["head_dim"] = key_len
    if has("blk.0.attn_q.bias"):
        d["qkv_bias"] = True
    if has("blk.0.attn_output.bias"):
        d["o_bias"] = True
    if has("blk.0.attn_norm.bias"):
        d["norm"] = "layernorm"
    if has("output.bias"):
        d["lm_head_bias"] = True
    if has("blk.0.attn_q_norm.weight"):
        d["qk_norm"] = "rms"
    if has("blk.0.post_ffw_norm.weight"):  # post_attention_norm alone is gpt-oss's pre-FFN norm
        d["sandwich_norms"] = True
    if has("blk.0.attn_sinks.weight"):
        d["attn_sinks"] = True
    if arch in ("gemma2", "gemma3"):
        d.update(norm_offset=True, embed_scale=True, activation="gelu")
        if arch == "gemma2":  # llama.cpp's defaults when the keys are absent: 50 and 30
            d.update(attn_softcap=float(k("attn_logit_softcapping", 50.0)),
                     final_softcap=float(k("final_logit_softcapping", 30.0)))
    sw = meta.get(f"{arch}.attention.sliding_window")
    pattern = _GGUF_SWA_PATTERN.get(arch)
    if arch == "llama4":
        if not (isinstance(sw, int) and sw == 0):  # sliding_window 0 turns chunking off
            d["layer_types"] = ["full" if (i + 1) % pattern == 0 else "chunked"
                                for i in range(layers)]
            d["attention_chunk"] = 8192
            d["nope_layers"] = [i for i in range(layers) if (i + 1) % pattern == 0]
        if k("expert_count", 0) != 128:  # llama.cpp: use_kq_norm off for the 128-expert model
            d["qk_norm"] = "l2"
    elif isinstance(sw, int) and sw > 0:
        d["sliding_window"] = sw
        if pattern:
            d["layer_types"] = ["full" if (i + 1) % pattern == 0 else "sliding"
                                for i in range(layers)]
    experts = k("expert_count", 0)
    if experts:
        d.update(experts=experts, experts_per_token=k("expert_used_count"),
                 expert_ffn=k("expert_feed_forward_length", d["ffn"]),
                 dense_layers=k("leading_dense_block_count", 0),
                 moe_step=k("interleave_moe_layer_step", 1) or 1)
        if has("blk.0.ffn_gate_inp.bias") or has(f"blk.{layers - 1}.ffn_gate_inp.bias"):
            d["router_linear_bias"] = True
        if has(f"blk.{layers - 1}.ffn_gate_exps.bias") or has(f"blk.{layers - 1}.ffn_down_exps.bias"):
            d["expert_bias"] = True
        if has(f"blk.{layers - 1}.exp_probs_b.bias"):
            d["router_bias"] = True
        shared = k("expert_shared_count", 1 if has(f"blk.{layers - 1}.ffn_up_shexp.weight")
                   else 0)
        if shared:
            d["shared_experts"] = shared
            width = meta.get(f"{arch}.expert_shared_feed_forward_length")
            if arch == "llama4":  # one shared expert as wide as a routed one
                width = d["expert_ffn"]
            if isinstance(width, int) and width != d["expert_ffn"] * shared:
                d["shared_expert_ffn"] = width
        gating = meta.get(f"{arch}.expert_gating_func")
        if isinstance(gating, int) and gating in _GGUF_GATING:
            d["routing"] = _GGUF_GATING[gating]
        elif arch == "gpt-oss":
            d["routing"] = "softmax_topk"
        elif arch == "llama4":
            d["routing"] = "sigmoid"
    if arch == "deepseek2":
        rope = k("rope.dimension_count")
        d.update(kv_lora_rank=k("attention.kv_lora_rank"), q_lora_rank=k("attention.q_lora_rank", 0),
                 qk_rope_dim=rope, kv_heads=heads)
        qk = meta.get(f"{arch}.attention.key_length_mla") or k("attention.key_length")
        v = meta.get(f"{arch}.attention.value_length_mla") or k("attention.value_length")
        d.update(qk_nope_dim=qk - rope, v_head_dim=v, head_dim=v)
    return ModelSpec.from_dict(d, where)


# -- resolution ----------------------------------------------------------------------------------

def resolve(model: str) -> ModelSource:
    """Resolve ``--model``: an existing path is a file or folder; anything else a catalog name."""
    if not isinstance(model, str) or not model.strip():
        raise InputError("--model needs a catalog name or a path")
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return _from_folder(path)
    if os.path.isfile(path):
        low = path.lower()
        if low.endswith(".json") and not low.endswith(".index.json"):
            cfg = load_config_file(path)
            name = cfg.get("_name_or_path") or os.path.basename(os.path.dirname(
                os.path.abspath(path))) or "config"
            return ModelSource(spec_from_config(cfg, str(name), path), "config", path)
        return _from_checkpoint(path)
    if model.startswith((".", "/", "~")) or model.endswith((".json", ".gguf", ".safetensors")):
        raise InputError(f"{model}: no such file or folder")
    from planner import catalog

    entry = catalog.lookup(model)
    return ModelSource(entry.spec, "catalog", entry.spec.name)


def _from_folder(path: str) -> ModelSource:
    try:
        names = os.listdir(path)
    except OSError as e:
        raise InputError(f"{path}: cannot list this folder ({e.strerror or e})") from None
    if "model.safetensors.index.json" in names or any(n.endswith(".safetensors") for n in names):
        return _from_checkpoint(path)
    ggufs = [n for n in names if n.endswith(".gguf")]
    if len(ggufs) == 1:
        return _from_checkpoint(os.path.join(path, ggufs[0]))
    if "config.json" in names:
        cfg_path = os.path.join(path, "config.json")
        cfg = load_config_file(cfg_path)
        return ModelSource(spec_from_config(cfg, os.path.basename(os.path.abspath(path)), cfg_path),
                           "config", path)
    if len(ggufs) > 1:
        raise InputError(f"{path}: holds several GGUF files ({', '.join(sorted(ggufs)[:3])}…); "
                         "name one")
    raise InputError(f"{path}: no config.json, safetensors or GGUF file in this folder")


def _from_checkpoint(path: str) -> ModelSource:
    from planner.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    base = os.path.basename(os.path.abspath(path))
    if ckpt.format == "gguf":
        gname = ckpt.metadata.get("general.name")
        name = gname if isinstance(gname, str) and gname else base
        spec = spec_from_gguf(ckpt.metadata, {t.name for t in ckpt.tensors}, name, path)
    else:
        if ckpt.config is None:
            raise InputError(f"{path}: a safetensors checkpoint needs its config.json beside it to "
                             "describe the architecture")
        name = ckpt.config.get("_name_or_path") or base
        spec = spec_from_config(ckpt.config, str(name), path)
    return ModelSource(spec, ckpt.format, path, ckpt)
