"""The long tail: plan an architecture the planner has no features for from transformers' own model.

When ``transformers`` (and torch) are installed and know a config's ``model_type``,
:func:`spec_from_transformers` builds ``AutoModelForCausalLM.from_config`` on the meta device (no
byte is allocated) and lists its parameters as the spec's explicit inventory
(``ModelSpec.tensors``): transformers' names and shapes exactly, a role and a TP split inferred from
each module's type and name. The KV cache comes from the config (``num_key_value_heads``,
``head_dim``, ``layer_types``, ``sliding_window``) through planner/memory.py's normal path. The spec
has family ``generic`` and its ``source`` says what was inferred (:func:`inferred`,
:func:`describe`).

Worked example (OLMo-2 7B's defaults): 32 blocks of q/k/v/o_proj (column, kv, kv, row), q_norm and
k_norm (replicated), gate/up/down_proj (column, column, row) and two norms; embed_tokens and lm_head
split by vocabulary; 6,888,624,128 parameters, transformers' own count.

Heavy imports (transformers, torch) are deferred to the call: ``import planner`` stays light.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from planner.errors import InputError
from planner.spec import MAX_EXPERT_FFNS, ModelSpec, Tensor
from planner.units import as_int

INSTALL = "pip install transformers torch"
"""What to install to plan an architecture only transformers knows."""

MAX_GENERIC_PARAMS = 10 ** 13
"""Parameters a config may imply before the model is built (DeepSeek-V3: 6.7e11)."""

# Config keys that size the model, checked before transformers builds anything: a hostile config
# (hidden 1e7, layers 1e5) is refused by name instead of building for minutes. The limits are
# ModelSpec.validate's.
_SIZE_KEYS = {
    "layers": (("num_hidden_layers", "n_layer", "num_layers", "n_layers"), 10_000),
    "hidden": (("hidden_size", "n_embd", "d_model", "dim"), 1 << 20),
    "heads": (("num_attention_heads", "n_head", "num_heads"), 1 << 16),
    "kv_heads": (("num_key_value_heads", "num_kv_heads", "n_head_kv"), 1 << 16),
    "head_dim": (("head_dim", "kv_channels"), 1 << 14),
    "ffn": (("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size",
             "moe_intermediate_size", "shared_expert_intermediate_size"), 1 << 22),
    "vocab": (("vocab_size", "padded_vocab_size"), 1 << 24),
    "experts": (("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
                1 << 16),
    "max_context": (("max_position_embeddings", "n_positions", "seq_length"), 1 << 32),
}

# TP split of a linear from its own (last) module name, Megatron's column/row rule.
_KV = frozenset({"k_proj", "v_proj", "k", "v", "key", "value", "wk", "wv"})
_COLUMN = frozenset({"q_proj", "q", "query", "wq", "gate_proj", "up_proj", "gate", "up", "fc1",
                     "w1", "w3", "c_fc", "in_proj", "gate_up_proj", "qkv_proj", "query_key_value",
                     "c_attn", "wqkv", "qkv", "dense_h_to_4h", "fc_in", "wi", "wi_0", "wi_1",
                     "q_b_proj", "kv_b_proj"}) | _KV
_ROW = frozenset({"o_proj", "o", "out_proj", "dense", "down_proj", "down", "fc2", "w2", "c_proj",
                  "dense_4h_to_h", "fc_out", "wo"})
_REPLICATED = frozenset({"q_a_proj", "kv_a_proj_with_mqa"})  # MLA's low-rank down-projections
_FUSED_QKV = frozenset({"qkv_proj", "query_key_value", "c_attn", "wqkv", "qkv"})
_ROUTER_NAMES = frozenset({"gate", "router", "wg", "gate_network"})

_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "relu": "relu"}
_KINDS = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked",
          "full": "full", "sliding": "sliding", "chunked": "chunked"}


def _first(obj: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = obj.get(k) if isinstance(obj, dict) else getattr(obj, k, None)
        if v is not None:
            return v
    return None


def _int(v: Any) -> int | None:
    """An integer config value; a per-layer list counts as its largest entry (Gemma 3n widths)."""
    if as_int(v) is not None:
        return as_int(v)
    if isinstance(v, (list, tuple)) and v and len(v) <= 1 << 16:
        items = [_int(x) for x in v]
        return max(items) if all(x is not None for x in items) else None
    return None


def _num(obj: Any, keys: tuple[str, ...], default: int = 0) -> int:
    """The first of ``keys`` that holds an integer (see _int), else ``default``."""
    for k in keys:
        v = _int(obj.get(k) if isinstance(obj, dict) else getattr(obj, k, None))
        if v is not None:
            return v
    return default


def _check_sizes(cfg: dict, where: str) -> None:
    """Refuse a config whose size fields are not integers or exceed the spec's limits."""
    for part in (cfg, cfg.get("text_config")):
        if not isinstance(part, dict):
            continue
        for keys, limit in _SIZE_KEYS.values():
            for k in keys:
                v = part.get(k)
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                        isinstance(v, float) and not v.is_integer()):
                    raise InputError(f"{where}: {k!r} must be an integer, got {v!r}"[:300])
                if not 0 < v <= limit:
                    raise InputError(f"{where}: {k!r} = {v} is implausible (expected 1 to "
                                     f"{limit})")


def _rough_params(tc: Any) -> int:
    """An upper-ish estimate of the parameters a text config implies, before building it."""
    h = _num(tc, ("hidden_size",))
    L = _num(tc, ("num_hidden_layers",))
    heads = _num(tc, ("num_attention_heads",), 1) or 1
    hd = _num(tc, ("head_dim",)) or h // heads or 1
    ffn = _num(tc, _SIZE_KEYS["ffn"][0]) or 4 * h
    experts = _num(tc, _SIZE_KEYS["experts"][0]) or 1
    vocab = _num(tc, ("vocab_size",))
    return L * (4 * h * heads * hd + 3 * h * ffn * (experts + 1)) + 2 * vocab * h


def _import_transformers(mt: str, where: str):
    try:
        import torch  # deferred: `import planner` stays light
        import transformers
    except ImportError:
        raise InputError(f"{where}: model_type {mt!r} is not one the planner knows; to plan it "
                         f"from transformers' own model, install it: {INSTALL}") from None
    return torch, transformers


def spec_from_transformers(cfg: dict, name: str, where: str) -> ModelSpec:
    """A ``generic`` ModelSpec for a config.json mapping whose model_type the planner does not
    know, from transformers' model of it built on the meta device. Raises InputError naming what
    to install when transformers is absent, and in one line when neither knows the model_type."""
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or not mt:
        raise InputError(f"{where}: no 'model_type' field; is this a Hugging Face config.json?")
    _check_sizes(cfg, where)
    torch, transformers = _import_transformers(mt, where)
    from transformers import AutoConfig, AutoModelForCausalLM

    log = transformers.logging
    verbosity = log.get_verbosity()
    log.set_verbosity_error()  # config warnings (token ids, defaults) are not the user's business
    try:
        kwargs = {k: v for k, v in cfg.items() if k != "model_type"}
        try:
            config = AutoConfig.for_model(mt, **kwargs)
        except ValueError as e:
            if "nrecognized" in str(e) or mt not in _known_types(transformers):
                raise InputError(f"{where}: model_type {mt!r} is known to neither the planner nor "
                                 f"transformers {transformers.__version__}") from None
            raise InputError(f"{where}: transformers rejects this {mt} config: "
                             f"{_one_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - transformers validates a config many ways
            # (strict-dataclass field errors, TypeErrors, asserts); each is a fact about the
            # user's file, reported in one line, never passed over
            raise InputError(f"{where}: transformers rejects this {mt} config: "
                             f"{type(e).__name__}: {_one_line(e)}") from None
        if getattr(config, "is_encoder_decoder", False):
            raise InputError(f"{where}: {mt} is an encoder-decoder model; the planner plans "
                             "decoder-only models")
        tc = config.get_text_config() if hasattr(config, "get_text_config") else config
        rough = _rough_params(tc)
        if rough > MAX_GENERIC_PARAMS:
            raise InputError(f"{where}: this config implies about {rough:.2g} parameters, "
                             f"implausibly many (more than {MAX_GENERIC_PARAMS:.0e})")
        experts = _num(tc, _SIZE_KEYS["experts"][0])
        L_cfg = _num(tc, ("num_hidden_layers",))
        if experts and experts * L_cfg > MAX_EXPERT_FFNS:
            raise InputError(f"{where}: {L_cfg} layers x {experts} experts is implausibly large "
                             f"(more than {MAX_EXPERT_FFNS} expert FFNs)")
        published = _published_dtype(config, tc)  # before the build sets it to bf16
        try:
            with torch.device("meta"):
                # built in bf16 so that a tensor kept in fp32 (a router's score bias) stands out
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        except ValueError as e:
            raise InputError(f"{where}: transformers {transformers.__version__} knows model_type "
                             f"{mt!r} but builds no causal language model from it "
                             f"({_one_line(e)})") from None
        except Exception as e:  # noqa: BLE001 - as above: the config's fault, in one line
            raise InputError(f"{where}: transformers cannot build a {mt} model from this config: "
                             f"{type(e).__name__}: {_one_line(e)}") from None
    finally:
        log.set_verbosity(verbosity)
    return _spec_from_model(model, tc, published, torch, transformers.__version__, mt, name,
                            where)


def _published_dtype(config, tc) -> str:
    """fp16, bf16 or fp32 as the config names it, else ''."""
    for c in (tc, config):
        dt = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
        if dt is not None:
            key = _DTYPES.get(str(dt).replace("torch.", ""))
            if key:
                return key
    return ""


def _known_types(transformers) -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _decoder_layers(model, L: int) -> str:
    """The name of the ModuleList holding the L decoder blocks (the largest such list)."""
    import torch.nn as nn

    best, best_n = "", -1
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == L:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = mname, n
    return best


def _leaf(mname: str) -> str:
    return mname.rsplit(".", 1)[-1].lower()


def _spec_from_model(model, tc, published: str, torch, version: str, mt: str, name: str,
                     where: str) -> ModelSpec:
    nn = torch.nn
    notes: list[str] = []
    L = _num(tc, ("num_hidden_layers",))
    blocks = _decoder_layers(model, L)
    if not blocks:
        raise InputError(f"{where}: cannot find the {L} decoder layers of transformers' "
                         f"{type(model).__name__}")
    block_re = re.compile(re.escape(blocks) + r"\.(\d+)\.")
    modules = dict(model.named_modules())
    emb_in = model.get_input_embeddings()
    head = model.get_output_embeddings()
    experts = _num(tc, _SIZE_KEYS["experts"][0])
    hidden = _num(tc, ("hidden_size",)) or int(emb_in.weight.shape[1])
    heads = _num(tc, ("num_attention_heads",))
    kv_heads = _num(tc, ("num_key_value_heads",)) or heads
    head_dim = _num(tc, ("head_dim",)) or (hidden // heads if heads else 0)
    vocab = int(emb_in.weight.shape[0])

    by_split: dict[str, set[str]] = {"column": set(), "kv": set(), "row": set()}
    unknown: set[str] = set()
    fused: set[str] = set()
    odd_kv: set[str] = set()
    tensors: list[Tensor] = []
    seen_block = False
    param_ids = {id(p) for p in model.parameters()}
    listed: set[int] = set()
    buffers: set[str] = set()
    # the state dict in module order: parameters and the persistent buffers a checkpoint stores
    for pname, p in model.state_dict(keep_vars=True).items():
        if id(p) in listed:  # a tied parameter is listed once
            continue
        listed.add(id(p))
        mname, _, leafp = pname.rpartition(".")
        mod = modules.get(mname)
        m = block_re.match(pname)
        fixed = None
        if m:
            layer = int(m.group(1))
            seen_block = True
        else:
            layer = L if seen_block else -1
        shape = tuple(int(d) for d in p.shape)
        cls = type(mod).__name__
        leaf = _leaf(mname)
        in_experts = ".experts." in pname or leaf == "experts"
        if id(p) not in param_ids:  # a persistent buffer (DeepSeek's e_score_correction_bias)
            role = "router" if experts and shape == (experts,) else "other"
            split = "replicated"
            fixed = "fp32" if p.dtype == torch.float32 else None
            buffers.add(_generic_name(pname, blocks))
        elif mod is emb_in or (isinstance(mod, nn.Embedding) and shape[0] == vocab):
            role, split = "embedding", "vocab"
            layer = -1
        elif mod is head and head is not None:
            role = "lm_head" if leafp == "weight" else "bias"
            split, layer = "vocab", L
        elif isinstance(mod, nn.Embedding):
            role, split = "position_embedding", "replicated"
        elif "norm" in cls.lower():
            role, split = "norm", "replicated"
        elif (experts and len(shape) <= 2 and (leaf in _ROUTER_NAMES or "router" in cls.lower())
              and shape[0] == experts):
            role, split = "router", "replicated"
        elif isinstance(mod, nn.Linear) or cls == "Conv1D":
            if cls == "Conv1D" and leafp == "weight":  # GPT-2 Conv1D stores (in, out)
                shape = (shape[1], shape[0])
            wsplit = _linear_split(leaf, m is not None, mname, by_split, unknown)
            if wsplit == "kv" and shape[0] != kv_heads * head_dim:  # not one head per rank
                wsplit = "column"
                odd_kv.add(leaf)
            if leaf in _FUSED_QKV:
                fused.add(leaf)
            role = "expert" if in_experts else "linear"
            if leafp == "weight":
                split = wsplit
            else:  # column biases split with their rows; row-parallel biases are added once
                role, split = "bias", ("replicated" if wsplit in ("row", "replicated") else wsplit)
        elif leafp == "sinks" and shape == (heads,):  # one logit per head: split with the heads
            role, split = "sinks", "column"
        elif in_experts and len(shape) == 3:
            # a fused expert tensor (E, out, in): counted as E stacked (out, in) matrices
            role, split, shape = "expert", *_fused_expert(leafp, shape, hidden, notes)
            by_split[split].add(leafp)
        elif in_experts and len(shape) == 2 and leafp.endswith("bias"):
            # fused expert biases (E, out)
            wsplit = "row" if leafp.replace("_bias", "") in _ROW else "column"
            role = "bias"
            split = "replicated" if wsplit == "row" else "column"
            shape = (shape[0] * shape[1],)
        else:
            role, split = "other", "replicated"
            unknown.add(_generic_name(pname, blocks))
        tensors.append(Tensor(pname, shape, role, split, layer, fixed))

    if buffers:
        notes.append(f"persistent buffers counted as weights: {', '.join(sorted(buffers)[:4])}"
                     + (" …" if len(buffers) > 4 else ""))
    tied = head is not None and not any(t.role == "lm_head" for t in tensors)
    has_expert = any(t.role == "expert" for t in tensors)
    if has_expert and not experts:
        tensors = [Tensor(t.name, t.shape, "linear", t.split, t.layer) if t.role == "expert" else t
                   for t in tensors]
        notes.append("expert tensors counted as dense linears (the config names no expert count)")
        has_expert = False

    d: dict[str, Any] = {"name": name, "family": "generic", "layers": L, "hidden": hidden,
                         "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                         "vocab": vocab, "tied_embeddings": tied, "tensors": tuple(tensors)}
    ffn = _num(tc, ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"))
    if not ffn:
        ffn = 4 * hidden
        notes.append(f"FFN width {ffn} (4 x hidden, the config names none)")
    d["ffn"] = ffn
    leaves = {part.lower() for t in tensors if 0 <= t.layer < L for part in t.name.split(".")}
    d["gated_ffn"] = bool(leaves & {"gate_proj", "gate_up_proj", "w3", "wi_0"})
    act = _first(tc, ("hidden_activation", "hidden_act", "activation_function"))
    act = act if isinstance(act, str) else ""
    d["activation"] = _ACTIVATIONS.get(act, "gelu" if act.startswith("gelu") else "silu")
    if act == "gelu":  # transformers' ACT2FN "gelu" is the exact erf form; gelu_new/_pytorch_tanh not
        d["gelu_approx"] = "none"
    d["norm"] = ("layernorm" if any(t.role == "norm" and t.name.endswith(".bias") for t in tensors)
                 else "rmsnorm")
    d["qkv_bias"] = any(t.role == "bias" and t.split in ("column", "kv") and
                        _leaf(t.name.rpartition(".")[0]) in ({"q_proj", "query"} | _FUSED_QKV)
                        for t in tensors)
    d["lm_head_bias"] = any(t.role == "bias" and t.split == "vocab" for t in tensors)
    for keys, fname in ((("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps"),
                         "norm_eps"),
                        (("attn_logit_softcapping",), "attn_softcap"),
                        (("final_logit_softcapping",), "final_softcap")):
        v = _first(tc, keys)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            d[fname] = float(v)
    if has_expert:
        notes += _moe_fields(tc, tensors, L, experts, d)
    mc = _num(tc, ("max_position_embeddings", "n_positions", "seq_length"))
    if not mc:
        mc = 2048
        notes.append("max context 2048 (the config names none)")
    d["max_context"] = mc
    rope = getattr(tc, "rope_parameters", None)
    theta = (rope.get("rope_theta") if isinstance(rope, dict) else None) or getattr(
        tc, "rope_theta", None)
    if isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0:
        d["rope_theta"] = float(theta)
    d["dtype"] = published or "fp16"
    if not published:
        notes.append("published dtype fp16 (the config names none)")
    notes += _kv_fields(tc, L, d, where)
    if _num(tc, ("kv_lora_rank",)):  # MLA: one latent per token per layer is cached
        d.update(kv_lora_rank=_num(tc, ("kv_lora_rank",)), q_lora_rank=_num(tc, ("q_lora_rank",)),
                 qk_nope_dim=_num(tc, ("qk_nope_head_dim",)),
                 qk_rope_dim=_num(tc, ("qk_rope_head_dim",)),
                 v_head_dim=_num(tc, ("v_head_dim",)), head_dim=_num(tc, ("v_head_dim",)))
    elif not any(t.split == "kv" or _leaf(t.name.rpartition(".")[0]) in _FUSED_QKV
                 for t in tensors if t.layer == 0):
        raise InputError(f"{where}: found no key/value projection in the first of transformers' "
                         f"{type(model).__name__} blocks; the planner sizes the KV cache of "
                         "attention layers only")

    ours = ", ".join(f"{s} {'/'.join(sorted(v))}" for s, v in by_split.items() if v)
    inferred = [f"weights: {len(tensors)} tensors of transformers' {type(model).__name__} on the "
                "meta device, names and shapes exact",
                f"TP splits from module names: {ours or 'none'}"]
    if fused:
        inferred.append(f"fused {'/'.join(sorted(fused))} split by columns as one (exact when TP "
                        "divides the KV heads)")
    if odd_kv:
        inferred.append(f"{'/'.join(sorted(odd_kv))} wider than {kv_heads} KV heads x head_dim "
                        f"{head_dim}: split by columns")
    if unknown:
        inferred.append(f"replicated on every rank (name not recognised): "
                        f"{', '.join(sorted(unknown)[:8])}{' …' if len(unknown) > 8 else ''}")
    inferred += notes
    per_layer = (f"an MLA latent of {d['kv_lora_rank']} + {d['qk_rope_dim']}" if d.get(
        "kv_lora_rank") else f"{kv_heads} KV heads x head_dim {head_dim}")
    inferred.append(f"KV cache: {per_layer} per layer, " + _kinds_summary(d, L))
    inferred.append("activations modelled as a standard decoder block")
    d["source"] = (f"transformers {version} ({mt}, config {where}); inferred: "
                   + "; ".join(x.replace(";", ",") for x in inferred))
    spec = ModelSpec(**d)
    spec.validate(where)
    _check_blocks(spec, where)
    return spec


def _generic_name(pname: str, blocks: str) -> str:
    return re.sub(re.escape(blocks) + r"\.\d+\.", f"{blocks}.N.", pname)


def _linear_split(leaf: str, in_block: bool, mname: str, by_split: dict[str, set[str]],
                  unknown: set[str]) -> str:
    if not in_block:
        unknown.add(mname)
        return "replicated"
    if leaf in _REPLICATED:
        return "replicated"
    for split, names in (("kv", _KV), ("column", _COLUMN), ("row", _ROW)):
        if leaf in names:
            by_split[split].add(leaf)
            return split
    unknown.add(leaf)
    return "replicated"


def _fused_expert(leafp: str, shape: tuple[int, ...], hidden: int,
                  notes: list[str]) -> tuple[str, tuple[int, ...]]:
    """Split and (E * out, in) shape of a fused (E, a, b) expert tensor: its name says whether it
    is column- or row-parallel; its orientation is read from which dimension is the hidden size."""
    E, a, b = shape
    key = leafp.lower()
    row = key in _ROW or key.startswith("down")
    if row:  # (E, hidden, in) or transposed (E, in, hidden)
        out_in = (a, b) if a == hidden else (b, a)
    else:    # (E, out, hidden) or transposed (E, hidden, out)
        out_in = (a, b) if b == hidden else (b, a)
    note = "fused 3-D expert tensors counted as stacked (out, in) matrices"
    if note not in notes:
        notes.append(note)
    return ("row" if row else "column"), (E * out_in[0], out_in[1])


def _moe_fields(tc, tensors: list[Tensor], L: int, experts: int, d: dict) -> list[str]:
    """experts, top-k, widths and which layers are MoE: the config's pattern when it matches the
    blocks transformers built, else the blocks themselves (every other layer in mlp_only_layers)."""
    notes: list[str] = []
    k = _num(tc, ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k"))
    if not 0 < k <= experts:
        k = 1
        notes.append("1 expert per token (the config names no top-k)")
    d.update(experts=experts, experts_per_token=k,
             expert_ffn=_num(tc, ("moe_intermediate_size", "expert_intermediate_size"), d["ffn"]),
             shared_experts=_num(tc, ("n_shared_experts", "num_shared_experts",
                                      "moe_num_shared_experts")),
             shared_expert_ffn=_num(tc, ("shared_expert_intermediate_size",)))
    moe = sorted({t.layer for t in tensors if t.role == "expert" and 0 <= t.layer < L})
    dense = _num(tc, ("first_k_dense_replace",))
    step = _num(tc, ("decoder_sparse_step", "interleave_moe_layer_step", "moe_layer_interval"), 1)
    only = getattr(tc, "mlp_only_layers", None)
    only = tuple(i for i in only if isinstance(i, int) and 0 <= i < L) if isinstance(
        only, (list, tuple)) else ()
    step = max(step, 1)
    if [i for i in range(L) if i >= dense and (i + 1) % step == 0 and i not in only] == moe:
        d.update(dense_layers=dense, moe_step=step, mlp_only_layers=only)
    else:
        d["mlp_only_layers"] = tuple(i for i in range(L) if i not in moe)
        notes.append(f"MoE layers read from the blocks: {len(moe)} of {L}")
    return notes


def _kv_fields(tc, L: int, d: dict, where: str) -> list[str]:
    """layer_types, sliding_window and attention_chunk from the config; notes on what was
    assumed."""
    notes: list[str] = []
    sw = _num(tc, ("sliding_window",))
    chunk = _num(tc, ("attention_chunk_size",))
    types = getattr(tc, "layer_types", None)
    if isinstance(types, (list, tuple)) and types:
        kinds = []
        for t in types:
            k = _KINDS.get(t) if isinstance(t, str) else None
            if k is None:
                raise InputError(f"{where}: layer type {t!r} keeps a state the planner cannot "
                                 "size from the config (it plans attention layers only)")
            kinds.append(k)
        if len(kinds) != L:
            raise InputError(f"{where}: layer_types lists {len(kinds)} layers but the model has "
                             f"{L}")
        if len(set(kinds)) > 1 or kinds[0] != "full":
            d["layer_types"] = tuple(kinds)
        if "sliding" in kinds:
            d["sliding_window"] = sw
        if "chunked" in kinds:
            d["attention_chunk"] = chunk
    elif sw > 0 and getattr(tc, "use_sliding_window", True) is not False:
        d["sliding_window"] = sw
        notes.append(f"every layer slides over {sw} tokens (sliding_window without layer_types)")
    return notes


def _kinds_summary(d: dict, L: int) -> str:
    kinds = Counter(d.get("layer_types") or
                    (("sliding",) * L if d.get("sliding_window") else ("full",) * L))
    parts = []
    for k, n in kinds.items():
        w = (f" (window {d['sliding_window']})" if k == "sliding" else
             f" (chunk {d['attention_chunk']})" if k == "chunked" else "")
        parts.append(f"{n} {k}{w}")
    return ", ".join(parts) + " attention layers"


def _check_blocks(spec: ModelSpec, where: str) -> None:
    """The memory model counts one block per layer class (dense, moe) and multiplies: refuse a
    model whose blocks of one class hold different tensors rather than plan it wrongly."""
    from planner.spec import layer_class

    first: dict[str, tuple[int, Counter]] = {}
    per_layer: dict[int, Counter] = {}
    for t in spec.tensors:
        if 0 <= t.layer < spec.layers:
            per_layer.setdefault(t.layer, Counter())[(t.role, t.split, t.shape, t.dtype)] += 1
    for i in range(spec.layers):
        sig = per_layer.get(i, Counter())
        cls = layer_class(spec, i)
        if cls not in first:
            first[cls] = (i, sig)
        elif first[cls][1] != sig:
            raise InputError(f"{where}: transformers' model has blocks that differ (layer {i} is "
                             f"not like layer {first[cls][0]}), which the generic path cannot "
                             "plan")


def inferred(spec: ModelSpec) -> list[str]:
    """What a generic spec's planning inferred rather than read (empty for a spec without an
    explicit inventory)."""
    if not spec.tensors or "; inferred: " not in spec.source:
        return []
    return spec.source.split("; inferred: ", 1)[1].split("; ")


def describe(spec: ModelSpec) -> str:
    """One line for the CLI: that the model is planned generically, and what was inferred."""
    items = inferred(spec)
    if not items:
        return ""
    return "generic: planned from transformers' own model; inferred: " + "; ".join(items)
