"""Vision towers and projectors of multimodal checkpoints (Gemma 3, Llama 4, Mistral 3).

The planner plans the text model; a multimodal checkpoint's vision tower and projector still occupy
memory, so they are part of the tensor inventory with role ``vision`` (kept in the checkpoint dtype,
replicated across TP ranks, on the first pipeline stage). :class:`VisionSpec` holds what is needed
to list every one of those tensors exactly; :func:`vision_inventory` lists them.

Three layouts, each a tower plus the projector its composite model puts after it (transformers
5.24, ``models/<name>/modeling_<name>.py``):

========  ===========================================  ==========================================
kind      tower                                        projector
========  ===========================================  ==========================================
siglip    ``SiglipVisionModel`` (Gemma 3)              ``Gemma3MultiModalProjector``: an RMSNorm
                                                       and one (vision, text) matrix
llama4    ``Llama4VisionModel``, its pixel-shuffle     ``Llama4MultiModalProjector``: one linear
          MLP (``vision_adapter``) included
pixtral   ``PixtralVisionModel`` (Mistral 3)           ``Mistral3MultiModalProjector``: RMSNorm,
                                                       patch merger, two linears
========  ===========================================  ==========================================

Names are those of the published safetensors, which are what transformers 5 loads through
``conversion_mapping.py``: its ``"llava"`` renaming (used by ``gemma3`` and ``mistral3``) maps
``^vision_tower`` and ``^multi_modal_projector`` to ``model.vision_tower`` /
``model.multi_modal_projector``, and ``CLIPVisionModel``'s (used by ``SiglipVisionModel``) removes
the prefix ``vision_model``, so the checkpoint's ``vision_tower.vision_model.encoder.layers.0...``
is transformers' ``model.vision_tower.encoder.layers.0...``. Llama 4 has no renaming: its
``Llama4ForConditionalGeneration`` holds ``vision_model`` and ``multi_modal_projector`` at the top,
named as in the checkpoint. Non-persistent buffers (rotary tables, position ids) are no tensors.

Engines and this inventory: every tensor is listed ``replicated`` and is never quantized (role
``vision`` is not in ``planner.precision.QUANTIZED_ROLES``, so planner/memory.py stores it in the
16-bit base dtype). That is exact for vLLM's ``--mm-encoder-tp-mode data`` ("hosting the full
weights on each TP rank", vllm/config/multimodal.py) and an upper bound for its default,
``"weights"``, under which the tower's linears are TP-sharded (vllm/model_executor/models/siglip.py:
``QKVParallelLinear`` / ``ColumnParallelLinear`` / ``RowParallelLinear`` with
``disable_tp=use_data_parallel``). vLLM quantizes SigLIP's MLP only when hidden and intermediate
sizes are multiples of 64 (or under bitsandbytes / torchao); Gemma 3's 4304 is not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from planner.errors import InputError

if TYPE_CHECKING:
    from planner.spec import Tensor

KINDS = ("siglip", "llama4", "pixtral")

_LIMITS = {"layers": 1 << 12, "hidden": 1 << 20, "heads": 1 << 16, "ffn": 1 << 22,
           "patch": 1 << 12, "image": 1 << 16, "channels": 1 << 6, "text_hidden": 1 << 20,
           "proj_in": 1 << 22, "proj_out": 1 << 22, "output_dim": 1 << 22, "merge": 1 << 6,
           "feature_layers": (1 << 12) + 1}
"""Upper bounds on every size, far above any published tower (the widest, Pixtral-Large's, has 48
layers of 1664); a hostile file cannot make the inventory huge."""

_REQUIRED = {"siglip": (), "llama4": ("proj_in", "proj_out", "output_dim"),
             "pixtral": ("merge", "feature_layers")}
"""Fields beyond the common ones that a kind's tensors need (each must be positive)."""


@dataclass(frozen=True)
class VisionSpec:
    """A vision encoder plus the projector into the text model (exactly enough to list tensors)."""

    kind: str
    """Layout of tower and projector: siglip (Gemma 3), llama4 (Llama 4), pixtral (Mistral 3)."""
    layers: int
    """Encoder blocks (``num_hidden_layers``)."""
    hidden: int
    """Encoder width (``hidden_size``)."""
    heads: int = 0
    """Attention heads (``num_attention_heads``); Llama 4's q/k/v/o are heads × (hidden // heads)
    wide."""
    ffn: int = 0
    """Encoder MLP width (``intermediate_size``); Llama 4's vision adapter takes it as its input."""
    patch: int = 0
    """Patch side in pixels (``patch_size``): the patch embedding is a patch × patch kernel."""
    image: int = 0
    """Image side in pixels (``image_size``): SigLIP and Llama 4 learn one position embedding per
    patch of it (Llama 4 one more, for its class token); Pixtral's positions are rotary."""
    channels: int = 3
    """Input channels (``num_channels``)."""
    text_hidden: int = 0
    """Width of the text model, the projector's output."""
    head: bool = False
    """SigLIP only: the attention-pooling head (``vision_use_head``; Gemma 3 sets it false)."""
    proj_in: int = 0
    """Llama 4 only: ``projector_input_dim``, the vision adapter's fc1 output."""
    proj_out: int = 0
    """Llama 4 only: ``projector_output_dim``, the vision adapter's fc2 (square)."""
    output_dim: int = 0
    """Llama 4 only: ``vision_output_dim``, the input of the projector's ``linear_1``."""
    merge: int = 0
    """Pixtral only: ``spatial_merge_size``; the patch merger maps merge² patches to one."""
    feature_layers: int = 0
    """Pixtral only: how many encoder layers feed the projector (``vision_feature_layer``, an index
    or a list of them); ``linear_1`` takes hidden × that many inputs."""
    projector_bias: bool = False
    """Pixtral only: ``multimodal_projector_bias``, biases on the projector's two linears."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str,
                  labels: dict[str, str] | None = None) -> "VisionSpec":
        """A VisionSpec from a mapping (a plan file's ``vision`` field), every field checked.

        ``labels`` names a field in errors as its source calls it (``vision_config
        'num_hidden_layers'`` for one read from a config.json); by default ``field 'layers'``."""

        def label(name: str) -> str:
            return (labels or {}).get(name, f"field {name!r}")

        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping of vision fields")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(str(k)[:40] for k in set(data) - set(known))
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown[:5])}{more}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise InputError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, "
                             f"got {_show(kind)}")
        required = ("layers", "hidden", "heads", "ffn", "patch", "image", "text_hidden",
                    *_REQUIRED[kind])
        for name in required:
            if name not in data:
                raise InputError(f"{where}: missing field {name!r} (vision kind {kind})")
        for name, value in data.items():
            if name == "kind":
                continue
            if known[name].type == "bool":
                if not isinstance(value, bool):
                    raise InputError(f"{where}: {label(name)} must be true or false, "
                                     f"got {_show(value)}")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{where}: {label(name)} must be an integer, got {_show(value)}")
            positive = name in required
            if value < (1 if positive else 0) or value > _LIMITS[name]:
                raise InputError(f"{where}: {label(name)} must be "
                                 f"{'a positive integer' if positive else 'an integer'} "
                                 f"of at most {_LIMITS[name]}, got {_show(value)}")
        v = cls(**data)
        if v.hidden % v.heads:
            raise InputError(f"{where}: {label('hidden')} {v.hidden} is not a multiple of "
                             f"{label('heads')} {v.heads}")
        if v.kind != "pixtral" and v.patch > v.image:
            raise InputError(f"{where}: {label('patch')} {v.patch} is larger than "
                             f"{label('image')} {v.image}")
        return v


def _t(name: str, *shape: int) -> "Tensor":
    from planner.spec import Tensor  # planner.spec imports this module

    return Tensor(name, tuple(shape), "vision", "replicated", -1)


def _linear(name: str, out: int, inp: int, bias: bool = True) -> list["Tensor"]:
    return [_t(f"{name}.weight", out, inp)] + ([_t(f"{name}.bias", out)] if bias else [])


def _layer_norm(name: str, width: int) -> list["Tensor"]:
    return [_t(f"{name}.weight", width), _t(f"{name}.bias", width)]


def _siglip(v: VisionSpec) -> list["Tensor"]:
    """modeling_siglip.py (SiglipVisionModel) and modeling_gemma3.py (Gemma3MultiModalProjector)."""
    p, h, f = "vision_tower.vision_model", v.hidden, v.ffn
    out = [_t(f"{p}.embeddings.patch_embedding.weight", h, v.channels, v.patch, v.patch),
           _t(f"{p}.embeddings.patch_embedding.bias", h),
           _t(f"{p}.embeddings.position_embedding.weight", (v.image // v.patch) ** 2, h)]
    for i in range(v.layers):
        b = f"{p}.encoder.layers.{i}"
        out += _layer_norm(f"{b}.layer_norm1", h)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += _linear(f"{b}.self_attn.{proj}", h, h)
        out += _layer_norm(f"{b}.layer_norm2", h)
        out += _linear(f"{b}.mlp.fc1", f, h) + _linear(f"{b}.mlp.fc2", h, f)
    out += _layer_norm(f"{p}.post_layernorm", h)
    if v.head:  # SiglipMultiheadAttentionPoolingHead: a probe and torch's MultiheadAttention
        out += [_t(f"{p}.head.probe", 1, 1, h),
                _t(f"{p}.head.attention.in_proj_weight", 3 * h, h),
                _t(f"{p}.head.attention.in_proj_bias", 3 * h)]
        out += _linear(f"{p}.head.attention.out_proj", h, h)
        out += _layer_norm(f"{p}.head.layernorm", h)
        out += _linear(f"{p}.head.mlp.fc1", f, h) + _linear(f"{p}.head.mlp.fc2", h, f)
    # a bare (vision, text) parameter, applied as x @ W; the norm is Gemma3RMSNorm (weight only)
    out += [_t("multi_modal_projector.mm_input_projection_weight", h, v.text_hidden),
            _t("multi_modal_projector.mm_soft_emb_norm.weight", h)]
    return out


def _llama4(v: VisionSpec) -> list["Tensor"]:
    """modeling_llama4.py: Llama4VisionModel (vision_model) and Llama4MultiModalProjector."""
    p, h, f = "vision_model", v.hidden, v.ffn
    qkv = v.heads * (h // v.heads)
    out = [_t(f"{p}.patch_embedding.linear.weight", h, v.channels * v.patch * v.patch),
           _t(f"{p}.class_embedding", h),
           _t(f"{p}.positional_embedding_vlm", (v.image // v.patch) ** 2 + 1, h)]
    out += _layer_norm(f"{p}.layernorm_pre", h) + _layer_norm(f"{p}.layernorm_post", h)
    for i in range(v.layers):
        b = f"{p}.model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj"):
            out += _linear(f"{b}.self_attn.{proj}", qkv, h)
        out += _linear(f"{b}.self_attn.o_proj", h, qkv)
        out += _linear(f"{b}.mlp.fc1", f, h) + _linear(f"{b}.mlp.fc2", h, f)
        out += _layer_norm(f"{b}.input_layernorm", h)
        out += _layer_norm(f"{b}.post_attention_layernorm", h)
    # Llama4VisionMLP2: fc1 is Linear(intermediate_size, projector_input_dim), fc2 is
    # Linear(projector_output_dim, projector_output_dim), both without bias
    out += _linear(f"{p}.vision_adapter.mlp.fc1", v.proj_in, f, bias=False)
    out += _linear(f"{p}.vision_adapter.mlp.fc2", v.proj_out, v.proj_out, bias=False)
    out += _linear("multi_modal_projector.linear_1", v.text_hidden, v.output_dim, bias=False)
    return out


def _pixtral(v: VisionSpec) -> list["Tensor"]:
    """modeling_pixtral.py (PixtralVisionModel), modeling_mistral3.py (its projector)."""
    p, h, f, t = "vision_tower", v.hidden, v.ffn, v.text_hidden
    out = [_t(f"{p}.patch_conv.weight", h, v.channels, v.patch, v.patch),
           _t(f"{p}.ln_pre.weight", h)]
    for i in range(v.layers):
        b = f"{p}.transformer.layers.{i}"
        out.append(_t(f"{b}.attention_norm.weight", h))
        out += (_linear(f"{b}.feed_forward.gate_proj", f, h, bias=False)
                + _linear(f"{b}.feed_forward.up_proj", f, h, bias=False)
                + _linear(f"{b}.feed_forward.down_proj", h, f, bias=False))
        for proj in ("k_proj", "v_proj", "q_proj", "o_proj"):
            out += _linear(f"{b}.attention.{proj}", h, h, bias=False)
        out.append(_t(f"{b}.ffn_norm.weight", h))
    m = "multi_modal_projector"
    out.append(_t(f"{m}.norm.weight", h))
    out += _linear(f"{m}.patch_merger.merging_layer", h, h * v.merge ** 2, bias=False)
    out += _linear(f"{m}.linear_1", t, h * v.feature_layers, bias=v.projector_bias)
    out += _linear(f"{m}.linear_2", t, t, bias=v.projector_bias)
    return out


_LAYOUTS = {"siglip": _siglip, "llama4": _llama4, "pixtral": _pixtral}


def vision_inventory(v: VisionSpec) -> list["Tensor"]:
    """Every tensor of the vision tower and projector (layer -1: they sit before the text model)."""
    layout = _LAYOUTS.get(v.kind)
    if layout is None:
        raise InputError(f"vision tower kind {v.kind!r} is not described; known: "
                         f"{', '.join(KINDS)}")
    return layout(v)


# -- config.json -------------------------------------------------------------------------------

_TOWERS = {"gemma3": ("siglip", "siglip_vision_model"), "llama4": ("llama4", "llama4_vision_model"),
           "mistral3": ("pixtral", "pixtral")}
"""Composite model_type -> (kind, the vision_config model_type transformers builds the tower from,
also its default when vision_config has none: ``sub_configs_defaults`` of Gemma3Config,
Llama4Config and Mistral3Config)."""

_DEFAULTS = {
    "siglip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
               "vision_use_head": True},
    "llama4": {"hidden_size": 768, "num_hidden_layers": 34, "num_attention_heads": 16,
               "num_channels": 3, "intermediate_size": 5632, "vision_output_dim": 7680,
               "image_size": 448, "patch_size": 14, "projector_input_dim": 4096,
               "projector_output_dim": 4096},
    "pixtral": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                "num_attention_heads": 16, "num_channels": 3, "image_size": 1024,
                "patch_size": 16},
}
"""What transformers 5.24 uses for a field the vision_config leaves out: the class defaults of
SiglipVisionConfig, Llama4VisionConfig and PixtralVisionConfig (a vision_config given as a mapping
is built from those, not from the composite's ``init_kwargs``)."""

_MISTRAL3_DEFAULTS = {"vision_feature_layer": -1, "multimodal_projector_bias": False,
                      "spatial_merge_size": 2}
"""Mistral3Config's defaults for its top-level projector fields."""


_LABELS = {
    "layers": "vision_config 'num_hidden_layers'", "hidden": "vision_config 'hidden_size'",
    "heads": "vision_config 'num_attention_heads'", "ffn": "vision_config 'intermediate_size'",
    "patch": "vision_config 'patch_size'", "image": "vision_config 'image_size'",
    "channels": "vision_config 'num_channels'", "text_hidden": "text_config 'hidden_size'",
    "head": "vision_config 'vision_use_head'", "proj_in": "vision_config 'projector_input_dim'",
    "proj_out": "vision_config 'projector_output_dim'",
    "output_dim": "vision_config 'vision_output_dim'", "merge": "'spatial_merge_size'",
    "feature_layers": "'vision_feature_layer'", "projector_bias": "'multimodal_projector_bias'",
}
"""Each VisionSpec field as config.json calls it, for errors."""


def _show(value: Any) -> str:
    """A value for an error line: its repr, cut short (a hostile file may hold megabytes)."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr fails past 4300 digits
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(cfg: dict, key: str, where: str, default: Any = None) -> Any:
    value = cfg.get(key)
    if value is None:
        if default is None:
            raise InputError(f"{where}: missing field {key!r}")
        return default
    return value


def _int(value: Any, label: str, where: str) -> Any:
    """An integer as config.json writes it (1152 or 1152.0), or one line naming the field; its
    range is checked by VisionSpec.from_dict."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 1 << 53:
        return int(value)
    if isinstance(value, (list, tuple)):
        raise InputError(f"{where}: {label} must be one integer (non-square sizes are not "
                         f"supported), got {_show(value)}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {label} must be an integer, got {_show(value)}")
    return value


def vision_spec_from_config(cfg: dict, where: str) -> VisionSpec | None:
    """The VisionSpec of a multimodal config.json (its ``vision_config`` and projector), or None.

    ``cfg`` is the whole mapping: the tower's fields come from ``vision_config`` (transformers'
    defaults filling what it leaves out), the projector's width from ``text_config.hidden_size``
    (required) and Mistral 3's projector from the top-level fields."""
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: expected a config.json mapping")
    vc = cfg.get("vision_config")
    if vc is None:
        return None
    mt = cfg.get("model_type")
    if mt not in _TOWERS:
        raise InputError(f"{where}: no vision tower is described for model_type {_show(mt)}; "
                         f"known: {', '.join(_TOWERS)}")
    if not isinstance(vc, dict):
        raise InputError(f"{where}: 'vision_config' must be a mapping")
    kind, tower = _TOWERS[mt]
    vmt = vc.get("model_type", tower)
    if vmt != tower:
        raise InputError(f"{where}: vision_config model_type {_show(vmt)} is not {tower!r}, the "
                         f"only tower described for {mt}")
    tc = cfg.get("text_config")
    if not isinstance(tc, dict):
        raise InputError(f"{where}: 'text_config' must be a mapping (the projector's output width "
                         f"is its hidden_size)")
    vw = f"{where}: vision_config"
    dflt = _DEFAULTS[kind]

    def g(key: str) -> Any:
        return _int(_field(vc, key, vw, dflt.get(key)), f"vision_config {key!r}", where)

    d: dict[str, Any] = {
        "kind": kind, "layers": g("num_hidden_layers"), "hidden": g("hidden_size"),
        "heads": g("num_attention_heads"), "ffn": g("intermediate_size"),
        "patch": g("patch_size"), "image": g("image_size"), "channels": g("num_channels"),
        "text_hidden": _int(_field(tc, "hidden_size", f"{where}: text_config"),
                            "text_config 'hidden_size'", where),
    }
    if kind == "siglip":
        d["head"] = _field(vc, "vision_use_head", vw, dflt["vision_use_head"])
    elif kind == "llama4":
        d.update(proj_in=g("projector_input_dim"), proj_out=g("projector_output_dim"),
                 output_dim=g("vision_output_dim"))
    else:

        def top(key: str) -> Any:
            return _field(cfg, key, where, _MISTRAL3_DEFAULTS[key])

        d["merge"] = _int(top("spatial_merge_size"), "'spatial_merge_size'", where)
        d["projector_bias"] = top("multimodal_projector_bias")
        layer = top("vision_feature_layer")
        if isinstance(layer, list):
            if not layer or len(layer) > _LIMITS["feature_layers"]:
                raise InputError(f"{where}: 'vision_feature_layer' must list 1 to "
                                 f"{_LIMITS['feature_layers']} layer indices")
            for x in layer:
                _int(x, "each 'vision_feature_layer'", where)
            d["feature_layers"] = len(layer)
        else:
            _int(layer, "'vision_feature_layer'", where)
            d["feature_layers"] = 1
    return VisionSpec.from_dict(d, where, _LABELS)
