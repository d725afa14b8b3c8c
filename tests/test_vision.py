"""planner/vision.py: the vision tower and projector of Gemma 3, Llama 4 and Mistral 3 checkpoints,
tensor for tensor against transformers' own model built on the meta device, and every malformed
vision config refused with one line."""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from dataclasses import replace

import pytest

from planner.errors import InputError
from planner.precision import QUANTIZED_ROLES
from planner.vision import VisionSpec, vision_inventory, vision_spec_from_config

from pathlib import Path

from planner_testutil import REPO

CONFIGS = Path(REPO) / "planner" / "catalog" / "configs"


def _catalog(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# Llama-4-Scout-17B-16E config.json (meta-llama/Llama-4-Scout-17B-16E; the copy printed in a
# public repository's llama4 notes next to its transformers parameter table, whose vision rows
# this inventory matches). Llama-4-Maverick-17B-128E's vision_config is the same dict, and its
# text hidden_size 5120 too (NVIDIA aiconfigurator's bundled copies of both published config.json
# files, asserted equal in its tests/.../test_llama4*.py).
LLAMA4_SCOUT = {
    "architectures": ["Llama4ForConditionalGeneration"],
    "model_type": "llama4",
    "text_config": {"hidden_size": 5120, "intermediate_size": 8192,
                    "intermediate_size_mlp": 16384, "num_attention_heads": 40,
                    "num_hidden_layers": 48, "num_key_value_heads": 8, "num_local_experts": 16,
                    "head_dim": 128, "vocab_size": 202048, "model_type": "llama4_text"},
    "vision_config": {
        "attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1408, "image_size": 336,
        "initializer_range": 0.02, "intermediate_size": 5632,
        "model_type": "llama4_vision_model", "multi_modal_projector_bias": False,
        "norm_eps": 1e-05, "num_attention_heads": 16, "num_channels": 3,
        "num_hidden_layers": 34, "patch_size": 14, "pixel_shuffle_ratio": 0.5,
        "projector_dropout": 0.0, "projector_input_dim": 4096, "projector_output_dim": 4096,
        "rope_theta": 10000, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default", "vision_output_dim": 4096},
}

LLAMA4_MAVERICK = {**LLAMA4_SCOUT,
                   "text_config": {**LLAMA4_SCOUT["text_config"], "num_local_experts": 128,
                                   "interleave_moe_layer_step": 2}}

# Mistral-Small-3.1-24B-Instruct-2503 config.json (mistralai/Mistral-Small-3.1-24B-Instruct-2503,
# transformers_version 4.50.0.dev0; the copy in TensorRT-LLM's tests/.../test_modeling_mistral.py
# fixture ``mistral_small_3_1_24b_config``, text layers as published: 40).
MISTRAL_SMALL_31 = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "image_token_index": 10, "model_type": "mistral3", "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu", "spatial_merge_size": 2,
    "text_config": {"head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
                    "intermediate_size": 32768, "max_position_embeddings": 131072,
                    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 40,
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
                    "sliding_window": None, "vocab_size": 131072},
    "vision_config": {"attention_dropout": 0.0, "head_dim": 64, "hidden_act": "silu",
                      "hidden_size": 1024, "image_size": 1540, "initializer_range": 0.02,
                      "intermediate_size": 4096, "model_type": "pixtral",
                      "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 24,
                      "patch_size": 14, "rope_theta": 10000.0},
    "vision_feature_layer": -1,
}

# gemma-3-12b-it: the same SigLIP tower as 4b and 27b (catalog copies), text hidden_size 3840.
GEMMA3_12B = {**_catalog("google--gemma-3-4b-it"),
              "text_config": {"hidden_size": 3840, "intermediate_size": 15360,
                              "model_type": "gemma3_text", "num_attention_heads": 16,
                              "num_hidden_layers": 48, "num_key_value_heads": 8,
                              "head_dim": 256}}

# small random variants: every option a layout has, at odd sizes
SMALL = {
    "gemma3-small-head": {
        "model_type": "gemma3",
        "text_config": {"hidden_size": 96, "intermediate_size": 160, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "head_dim": 48, "num_hidden_layers": 1,
                        "model_type": "gemma3_text"},
        "vision_config": {"hidden_size": 40, "intermediate_size": 72, "num_hidden_layers": 3,
                          "num_attention_heads": 5, "patch_size": 6, "image_size": 30,
                          "num_channels": 2, "model_type": "siglip_vision_model",
                          "vision_use_head": True},
        "mm_tokens_per_image": 25,
    },
    "gemma3-defaults": {  # vision_config leaves every size to SiglipVisionConfig's defaults
        "model_type": "gemma3",
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "head_dim": 32, "num_hidden_layers": 1},
        "vision_config": {"num_hidden_layers": 2},
    },
    "llama4-small": {
        "model_type": "llama4",
        "text_config": {"hidden_size": 80, "intermediate_size": 96, "intermediate_size_mlp": 112,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 20,
                        "num_hidden_layers": 1, "num_local_experts": 2},
        "vision_config": {"hidden_size": 36, "intermediate_size": 88, "num_hidden_layers": 2,
                          "num_attention_heads": 6, "patch_size": 4, "image_size": 20,
                          "num_channels": 3, "projector_input_dim": 56,
                          "projector_output_dim": 44, "vision_output_dim": 44,
                          "pixel_shuffle_ratio": 0.5},
    },
    "mistral3-small": {
        "model_type": "mistral3",
        "multimodal_projector_bias": True, "spatial_merge_size": 3,
        "vision_feature_layer": [-1, -2, 0],
        "text_config": {"hidden_size": 72, "intermediate_size": 100, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 18, "num_hidden_layers": 1,
                        "model_type": "mistral"},
        "vision_config": {"hidden_size": 48, "intermediate_size": 68, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "head_dim": 12, "patch_size": 5,
                          "image_size": 60, "num_channels": 4, "model_type": "pixtral"},
    },
}

REAL = {
    "gemma-3-4b": _catalog("google--gemma-3-4b-it"),
    "gemma-3-12b": GEMMA3_12B,
    "gemma-3-27b": _catalog("google--gemma-3-27b-it"),
    "llama-4-scout": LLAMA4_SCOUT,
    "llama-4-maverick": LLAMA4_MAVERICK,
    "mistral-small-3.1": MISTRAL_SMALL_31,
}


@pytest.fixture(scope="module")
def hf():
    """transformers and torch, or skip."""
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@functools.lru_cache(maxsize=None)
def _hf_vision(cfg_json: str) -> tuple[Counter, int]:
    """transformers' vision tower and projector tensors of a composite config, as the checkpoint
    names them: the model is built on meta (one text layer and a small vocabulary, which no vision
    tensor depends on), and its state dict is renamed by transformers' own reverse of the
    conversion mapping (what ``save_pretrained`` does for a model ``from_pretrained`` loaded)."""
    import torch
    import transformers
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import revert_weight_conversion

    cfg = json.loads(cfg_json)
    cfg["text_config"] = {**cfg["text_config"], "num_hidden_layers": 1, "vocab_size": 256}
    config = transformers.AutoConfig.for_model(
        cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    text = ("language_model.", "lm_head.")
    params = {n: p for n, p in model.named_parameters()
              if not any(n.startswith(t) or n.startswith("model." + t) for t in text)}
    state = {n: t for n, t in model.state_dict().items() if n in params}
    assert len(state) == len(params)  # no vision parameter is tied to or shared with another
    model._weight_conversions = get_model_conversion_mapping(model)
    saved = revert_weight_conversion(model, state)
    shapes = Counter((n, tuple(t.shape)) for n, t in saved.items())
    return shapes, sum(p.numel() for p in params.values())


def _ours(cfg: dict) -> tuple[Counter, int]:
    v = vision_spec_from_config(cfg, "config.json")
    assert v is not None
    inv = vision_inventory(v)
    return Counter((t.name, t.shape) for t in inv), sum(t.numel for t in inv)


@pytest.mark.parametrize("name", [*REAL, *SMALL])
def test_inventory_is_transformers_checkpoint(hf, name):
    cfg = {**REAL, **SMALL}[name]
    theirs, their_count = _hf_vision(json.dumps(cfg))
    ours, our_count = _ours(cfg)
    assert ours == theirs, (sorted(ours - theirs)[:5], sorted(theirs - ours)[:5])
    assert our_count == their_count


# published totals of the towers plus projectors (transformers' count, checked by the test above)
COUNTS = {"gemma-3-4b": 419_816_304, "gemma-3-12b": 421_290_864, "gemma-3-27b": 423_060_336,
          "llama-4-scout": 871_932_416, "llama-4-maverick": 871_932_416,
          "mistral-small-3.1": 438_958_080}


def test_published_counts():
    """The published towers' counts, pinned (each equal to transformers' by the test above),
    so a change to a layout shows as a number here even where transformers is not installed."""
    assert {k: _ours(cfg)[1] for k, cfg in REAL.items()} == COUNTS


def test_inventory_tensors_are_vision_replicated_first_stage():
    for cfg in REAL.values():
        for t in vision_inventory(vision_spec_from_config(cfg, "c")):
            assert (t.role, t.split, t.layer, t.dtype) == ("vision", "replicated", -1, None)
    assert "vision" not in QUANTIZED_ROLES  # kept in the checkpoint dtype under every format


def test_spec_round_trips_and_hashes():
    for cfg in [*REAL.values(), *SMALL.values()]:
        v = vision_spec_from_config(cfg, "c")
        assert VisionSpec.from_dict(v.to_dict(), "plan") == v
        assert hash(v) == hash(VisionSpec.from_dict(json.loads(json.dumps(v.to_dict())), "p"))


def test_no_vision_config_is_none():
    assert vision_spec_from_config({"model_type": "llama", "hidden_size": 8}, "c") is None
    assert vision_spec_from_config({**LLAMA4_SCOUT, "vision_config": None}, "c") is None


def test_model_spec_carries_vision():
    """The spec's inventory adds the tower (planner/spec.py calls vision_inventory)."""
    from planner.spec import ModelSpec, inventory

    base = ModelSpec.from_dict({"name": "t", "family": "llama", "layers": 2, "hidden": 64,
                                "heads": 4, "vocab": 100, "ffn": 128}, "t")
    v = vision_spec_from_config(SMALL["mistral3-small"], "c")
    spec = replace(base, vision=v)
    extra = [t for t in inventory(spec) if t.role == "vision"]
    assert extra == vision_inventory(v)
    back = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())), "plan")
    assert back.vision == v


def _set(cfg: dict, path: str, value) -> dict:
    out = copy.deepcopy(cfg)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is _DEL:
        del node[leaf]
    else:
        node[leaf] = value
    return out


_DEL = object()

HOSTILE = [
    (LLAMA4_SCOUT, "vision_config.num_hidden_layers", 10**9, "at most"),
    (LLAMA4_SCOUT, "vision_config.num_hidden_layers", 10**5000, "at most"),
    (LLAMA4_SCOUT, "vision_config.hidden_size", "x" * 10**6, "must be an integer"),
    (LLAMA4_SCOUT, "vision_config.model_type", "y" * 10**6, "is not"),
    (LLAMA4_SCOUT, "vision_config.patch_size", list(range(10**5)), "one integer"),
    (LLAMA4_SCOUT, "vision_config.hidden_size", 0, "positive"),
    (LLAMA4_SCOUT, "vision_config.intermediate_size", -4, "positive"),
    (LLAMA4_SCOUT, "vision_config.patch_size", "14", "must be an integer"),
    (LLAMA4_SCOUT, "vision_config.patch_size", [14, 14], "one integer"),
    (LLAMA4_SCOUT, "vision_config.image_size", 1e300, "must be an integer"),
    (LLAMA4_SCOUT, "vision_config.num_channels", True, "must be an integer"),
    (LLAMA4_SCOUT, "vision_config.patch_size", 500, "is larger than"),
    (LLAMA4_SCOUT, "vision_config.num_attention_heads", 15, "is not a multiple of"),
    (LLAMA4_SCOUT, "vision_config.projector_input_dim", 0, "positive"),
    (LLAMA4_SCOUT, "vision_config.model_type", "siglip_vision_model", "not 'llama4_vision_model'"),
    (LLAMA4_SCOUT, "vision_config", [1, 2], "must be a mapping"),
    (LLAMA4_SCOUT, "text_config", None, "text_config"),
    (LLAMA4_SCOUT, "text_config.hidden_size", _DEL, "missing field 'hidden_size'"),
    (LLAMA4_SCOUT, "text_config.hidden_size", 1 << 40, "at most"),
    (LLAMA4_SCOUT, "model_type", "llava", "no vision tower"),
    (MISTRAL_SMALL_31, "spatial_merge_size", 0, "positive"),
    (MISTRAL_SMALL_31, "spatial_merge_size", 2.5, "must be an integer"),
    (MISTRAL_SMALL_31, "multimodal_projector_bias", "no", "true or false"),
    (MISTRAL_SMALL_31, "vision_feature_layer", [], "must list"),
    (MISTRAL_SMALL_31, "vision_feature_layer", ["-1"], "must be an integer"),
    (MISTRAL_SMALL_31, "vision_feature_layer", list(range(10**5)), "must list"),
    (MISTRAL_SMALL_31, "vision_config.num_hidden_layers", -1, "positive"),
    (_catalog("google--gemma-3-27b-it"), "vision_config.vision_use_head", 1, "true or false"),
    (_catalog("google--gemma-3-27b-it"), "vision_config.hidden_size", None, None),  # a default
]


@pytest.mark.parametrize("base,path,value,msg", HOSTILE,
                         ids=[f"{p}-{i}" for i, (_, p, _, _) in enumerate(HOSTILE)])
def test_hostile_config_is_one_line(base, path, value, msg):
    cfg = _set(base, path, value)
    if msg is None:  # null means transformers' default (SiglipVisionConfig: 768)
        assert vision_spec_from_config(cfg, "cfg.json").hidden == 768
        return
    with pytest.raises(InputError) as e:
        vision_spec_from_config(cfg, "cfg.json")
    text = str(e.value)
    assert msg in text and "\n" not in text and text.startswith("cfg.json")
    assert len(text) < 300


@pytest.mark.parametrize("data,msg", [
    ("siglip", "expected a mapping"),
    ({"kind": "clip", "layers": 1}, "field 'kind'"),
    ({"kind": "siglip", "layers": 2, "hidden": 64}, "missing field 'heads'"),
    ({"kind": "llama4", "layers": 2, "hidden": 64, "heads": 4, "ffn": 8, "patch": 2, "image": 4,
      "text_hidden": 8}, "missing field 'proj_in'"),
    ({"kind": "siglip", "layers": 2, "hidden": 64, "heads": 4, "ffn": 8, "patch": 2, "image": 4,
      "text_hidden": 8, "colour": 1}, "unknown field(s) colour"),
    ({"kind": "siglip", "layers": 2.0, "hidden": 64, "heads": 4, "ffn": 8, "patch": 2,
      "image": 4, "text_hidden": 8}, "field 'layers' must be an integer"),
    ({"kind": "siglip", "layers": 2, "hidden": 64, "heads": 4, "ffn": 8, "patch": 2, "image": 4,
      "text_hidden": 8, "head": "yes"}, "field 'head' must be true or false"),
    ({"kind": "siglip", "layers": 2, "hidden": 64, "heads": 4, "ffn": 8, "patch": 2, "image": 4,
      "text_hidden": 8, "merge": -1}, "field 'merge'"),
])
def test_hostile_spec_is_one_line(data, msg):
    with pytest.raises(InputError) as e:
        VisionSpec.from_dict(data, "plan.json: field 'vision'")
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("weights", ["fp16", "int4", "fp8"])
def test_memory_holds_tower_unquantized_on_every_tp_rank_of_first_stage(weights):
    """planner/memory.py: role ``vision`` is stored in the 16-bit base dtype under any weight
    format, whole on each TP rank (replicated), and only on the first pipeline stage (layer -1)."""
    from planner.memory import Workload, estimate
    from planner.spec import ModelSpec

    base = ModelSpec.from_dict({"name": "t", "family": "llama", "layers": 4, "hidden": 256,
                                "heads": 4, "vocab": 512, "ffn": 512}, "t")
    v = vision_spec_from_config(SMALL["mistral3-small"], "c")
    spec = replace(base, vision=v)
    numel = sum(t.numel for t in vision_inventory(v))
    est = estimate(spec, weights, "fp16", tp=2, pp=2, workload=Workload(1, 64, 0))
    plain = estimate(base, weights, "fp16", tp=2, pp=2, workload=Workload(1, 64, 0))
    for r, p in zip(est.ranks, plain.ranks):
        assert r.weights - p.weights == (2 * numel if r.stage == 0 else 0)
