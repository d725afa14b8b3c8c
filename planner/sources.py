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
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


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


_SUPPORTED = ("llama", "mistral", "qwen2", "phi3", "mixtral", "opt", "gpt2", "bloom", "falcon",
              "RefinedWeb", "RefinedWebModel", "deepseek_v3", "glm")


def spec_from_config(cfg: dict, name: str, where: str) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json mapping."""
    mt = cfg.get("model_type")
    if not isinstance(mt, str):
        raise InputError(f"{where}: no 'model_type' field; is this a Hugging Face config.json?")
    if mt not in _SUPPORTED:
        raise InputError(f"{where}: model_type {mt!r} is not supported; supported: "
                         f"{', '.join(_SUPPORTED)}")
    g = lambda *k, **kw: _get(cfg, where, *k, **kw)  # noqa: E731
    gi = lambda *k, **kw: _int(cfg, where, k[0], g(*k, **kw))  # noqa: E731
    b = lambda k, default: _bool(cfg, where, k, default)  # noqa: E731
    d: dict[str, Any] = {"name": name, "source": f"config.json ({where})"}
    dt = cfg.get("torch_dtype") or cfg.get("dtype")
    d["dtype"] = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(
        dt if isinstance(dt, str) else "", "fp16")
    if mt in ("llama", "mistral", "qwen2", "phi3", "mixtral", "deepseek_v3"):
        d.update(family=mt, layers=g("num_hidden_layers"), hidden=g("hidden_size"),
                 heads=g("num_attention_heads"),
                 kv_heads=g("num_key_value_heads", default=g("num_attention_heads")),
                 ffn=g("intermediate_size"), vocab=g("vocab_size"),
                 tied_embeddings=b("tie_word_embeddings", False),
                 max_context=g("max_position_embeddings", default=2048),
                 rope_theta=_float(cfg, where, "rope_theta", 10000.0),
                 norm_eps=_float(cfg, where, "rms_norm_eps", 1e-6))
        if cfg.get("head_dim"):
            d["head_dim"] = cfg["head_dim"]
        if mt == "qwen2":
            d["qkv_bias"] = True
        if b("attention_bias", False):
            d["qkv_bias"] = d["o_bias"] = True
        if b("mlp_bias", False):
            d["mlp_bias"] = True
        sw = cfg.get("sliding_window")
        if sw and (mt != "qwen2" or b("use_sliding_window", False)):
            d["sliding_window"] = _int(cfg, where, "sliding_window", sw)
        if mt == "mixtral":
            d.update(experts=g("num_local_experts"), experts_per_token=g("num_experts_per_tok"),
                     expert_ffn=g("intermediate_size"))
        if mt == "deepseek_v3":
            d.update(experts=g("n_routed_experts"), experts_per_token=g("num_experts_per_tok"),
                     shared_experts=g("n_shared_experts", default=0, required=False),
                     expert_ffn=g("moe_intermediate_size"),
                     dense_layers=g("first_k_dense_replace", default=0, required=False),
                     router_bias=cfg.get("topk_method", "noaux_tc") == "noaux_tc",
                     q_lora_rank=cfg.get("q_lora_rank") or 0, kv_lora_rank=g("kv_lora_rank"),
                     qk_nope_dim=g("qk_nope_head_dim"), qk_rope_dim=g("qk_rope_head_dim"),
                     v_head_dim=g("v_head_dim"), head_dim=g("v_head_dim"))
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
                 gated_ffn=False, activation="gelu", norm="layernorm",
                 tied_embeddings=b("tie_word_embeddings", True),
                 qkv_bias=bias, o_bias=bias, mlp_bias=bias, parallel_attn=True,
                 parallel_norms=2 if (new_arch and cfg.get("num_ln_in_parallel_attn", 2) == 2) else 1,
                 max_context=cfg.get("max_position_embeddings") or 2048,
                 rope_theta=_float(cfg, where, "rope_theta", 10000.0))
    elif mt == "glm":
        d.update(family="glm", layers=g("num_layers"), hidden=g("hidden_size"),
                 heads=g("num_attention_heads"), ffn=g("inner_hidden_size"), vocab=g("vocab_size"),
                 activation="gelu", norm="layernorm", tied_embeddings=True, qkv_bias=True,
                 o_bias=True, mlp_bias=True, max_context=cfg.get("max_sequence_length") or 2048)
    return ModelSpec.from_dict(d, where)


# -- GGUF metadata -------------------------------------------------------------------------------

_GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "phi3": "phi3"}


def spec_from_gguf(meta: dict, tensor_names: set[str], name: str, where: str) -> ModelSpec:
    """A ModelSpec from GGUF key/value metadata (Llama-style architectures)."""
    arch = meta.get("general.architecture")
    if arch not in _GGUF_ARCH:
        raise InputError(f"{where}: GGUF architecture {arch!r} is not supported; supported: "
                         f"{', '.join(_GGUF_ARCH)}")

    def k(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise InputError(f"{where}: GGUF metadata lacks {arch}.{key}")
        return v

    heads = k("attention.head_count")
    hidden = k("embedding_length")
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = tokens.get("len") if isinstance(tokens, dict) else None
    if not isinstance(vocab, int):
        raise InputError(f"{where}: GGUF metadata gives no vocabulary size")
    d: dict[str, Any] = {
        "name": name, "family": _GGUF_ARCH[arch], "source": f"GGUF metadata ({where})",
        "layers": k("block_count"), "hidden": hidden, "heads": heads,
        "kv_heads": k("attention.head_count_kv", heads), "ffn": k("feed_forward_length"),
        "vocab": vocab, "max_context": k("context_length", 2048),
        "tied_embeddings": "output.weight" not in tensor_names,
        "rope_theta": float(k("rope.freq_base", 10000.0)),
        "norm_eps": float(k("attention.layer_norm_rms_epsilon", 1e-5)),
    }
    key_len = meta.get(f"{arch}.attention.key_length")
    if isinstance(key_len, int) and key_len != hidden // heads:
        d["head_dim"] = key_len
    if "blk.0.attn_q.bias" in tensor_names:
        d["qkv_bias"] = True
    sw = meta.get(f"{arch}.attention.sliding_window")
    if isinstance(sw, int) and sw > 0:
        d["sliding_window"] = sw
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
