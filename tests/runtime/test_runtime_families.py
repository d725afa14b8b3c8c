"""Falcon (parallel attention + MLP), BLOOM (ALiBi, embedding LayerNorm) and GLM-130B-style (GeGLU)
in the runtime: meta inventory = planner inventory for the catalog models, measured weights and KV
equal to the prediction to the byte and activations within 2% on CPU launches, ALiBi slopes and
mask, cached decode = full recompute, and HF checkpoint names for these families."""

from __future__ import annotations

import pytest
import torch

from planner import catalog
from planner.spec import inventory, param_count
from runtime.model import (KVCache, Layout, RuntimeError_, alibi_slopes, build, check_buildable,
                           meta_inventory)
from runtime.weights import SafetensorsSource, materialize_random, random_tensor
from runtime_testutil import (BLOOM, FALCON, FALCON_MQA, GLM, assert_cached_decode_matches,
                              launch_and_check)

NEW = ("falcon", "bloom", "glm")
CATALOG = [e.spec for e in catalog.entries() if e.spec.family in NEW]


def test_catalog_has_the_new_families():
    names = {s.name for s in CATALOG}
    assert {"tiiuae/falcon-40b", "tiiuae/falcon-180B", "bigscience/bloom",
            "THUDM/GLM-130B"} <= names


@pytest.mark.parametrize("spec", CATALOG + [FALCON, FALCON_MQA, BLOOM, GLM], ids=lambda s: s.name)
def test_inventory_equals_meta_model(spec):
    check_buildable(spec, 2048)
    got = meta_inventory(spec)  # meta device: nothing is allocated
    assert got == {t.name: tuple(t.shape) for t in inventory(spec)}
    assert sum(torch.Size(s).numel() for s in got.values()) == param_count(spec)


# -- CPU launches: predicted vs measured --------------------------------------------------------

CASES = [(s, w, t) for s in (FALCON, BLOOM, GLM)
         for w, t in (("fp16", 1), ("int8", 1), ("int4-g128", 2))] + [(FALCON_MQA, "int4-g128", 2)]


@pytest.mark.parametrize("spec,weights,tp", CASES,
                         ids=[f"{s.name}-{w}-tp{t}" for s, w, t in CASES])
def test_measured_equals_predicted(tmp_path, spec, weights, tp):
    launch_and_check(tmp_path, spec, weights, tp)


def test_prediction_models_the_new_transients():
    """The runtime walk holds the ALiBi mask at SDPA and the attention output through a two-norm
    parallel block's MLP; the one-norm parallel block holds nothing extra."""
    from planner.memory import Workload, estimate
    wl = Workload(1, 512, 2)
    det = estimate(BLOOM, "bf16", "fp16", 1, 1, wl, "runtime", device="cpu").ranks[0]
    assert det.activations == 6_553_600  # measured (runtime/NOTES.md)
    assert det.detail["activations"]["attn.alibi_mask.alibi_mask"] == 8 * 512 * 512 * 2
    det = estimate(FALCON, "bf16", "fp16", 1, 1, Workload(2, 64, 4), "runtime",
                   device="cpu").ranks[0]
    assert det.detail["activations"]["mlp.down_proj.attn_block_out"] == 128 * 256 * 2
    det = estimate(FALCON_MQA, "bf16", "fp16", 1, 1, Workload(2, 64, 4), "runtime",
                   device="cpu").ranks[0]
    assert not any("attn_block_out" in k for k in det.detail["activations"])


# -- numerics -----------------------------------------------------------------------------------

def test_alibi_slopes():
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    s12 = alibi_slopes(12)
    assert s12[:8] == [2.0 ** -i for i in range(1, 9)]
    assert s12[8:] == pytest.approx([2.0 ** -(k / 2) for k in (1, 3, 5, 7)])
    assert len(alibi_slopes(112)) == 112


def test_alibi_mask_is_causal_and_sliced_per_rank():
    m = build(BLOOM, Layout(tp=2, rank=1, act_dtype=torch.float32))
    att = m.model.layers[0].self_attn
    assert att.slopes == alibi_slopes(8)[4:]
    mask = att.alibi(3, 4, torch.float32)  # queries 3..6 over keys 0..6
    assert mask.shape == (1, 4, 4, 7)
    for hh, slope in enumerate(att.slopes):
        for i in range(4):
            for j in range(7):
                want = slope * (j - (3 + i)) if j <= 3 + i else float("-inf")
                assert mask[0, hh, i, j].item() == pytest.approx(want)


@pytest.mark.parametrize("spec", [FALCON, FALCON_MQA, BLOOM, GLM], ids=lambda s: s.name)
def test_cached_decode_equals_full_recompute(spec):
    """Prefill + cached decode gives the greedy tokens that re-running the whole sequence gives
    (positions, ALiBi offsets and the parallel block agree between the two paths)."""
    assert_cached_decode_matches(spec)


# -- checkpoint names ---------------------------------------------------------------------------

def _fuse_qkv(q, k, v, kv, hd):
    """HF Falcon/BLOOM query_key_value rows: per KV group its query heads, then k, then v."""
    g = q.shape[0] // hd // kv
    rest = q.shape[1:]
    qs = q.reshape(kv, g, hd, *rest)
    return torch.cat([qs, k.reshape(kv, 1, hd, *rest), v.reshape(kv, 1, hd, *rest)],
                     dim=1).reshape(-1, *rest)


def _hf_tensors(spec):
    """The random inventory tensors, renamed and fused as the family's HF/SAT checkpoint holds them."""
    want = {t.name: random_tensor(t, 5) for t in inventory(spec)}
    out = {}
    L, hd = spec.layers, spec.head_dim
    if spec.family == "glm":
        out["transformer.word_embeddings.weight"] = want["model.embed_tokens.weight"]
        for kind in ("weight", "bias"):
            out[f"transformer.final_layernorm.{kind}"] = want[f"model.norm.{kind}"]
        for i in range(L):
            p, o = f"model.layers.{i}.", f"transformer.layers.{i}."
            for kind in ("weight", "bias"):
                out[o + f"attention.query_key_value.{kind}"] = torch.cat(
                    [want[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
                out[o + f"attention.dense.{kind}"] = want[p + f"self_attn.o_proj.{kind}"]
                out[o + f"mlp.dense_h_to_4h.{kind}"] = torch.cat(
                    [want[p + f"mlp.up_proj.{kind}"], want[p + f"mlp.gate_proj.{kind}"]])
                out[o + f"mlp.dense_4h_to_h.{kind}"] = want[p + f"mlp.down_proj.{kind}"]
                for n in ("input_layernorm", "post_attention_layernorm"):
                    out[o + f"{n}.{kind}"] = want[p + f"{n}.{kind}"]
        return want, out
    pre = "transformer." if spec.family == "falcon" else ""  # BLOOM checkpoints drop the prefix
    out[pre + "word_embeddings.weight"] = want["model.embed_tokens.weight"]
    for kind in ("weight", "bias"):
        out[pre + f"ln_f.{kind}"] = want[f"model.norm.{kind}"]
        if spec.embed_norm:
            out[pre + f"word_embeddings_layernorm.{kind}"] = want[f"model.embed_layernorm.{kind}"]
    if "lm_head.weight" in want:
        out["lm_head.weight"] = want["lm_head.weight"]
    two = spec.parallel_attn and spec.parallel_norms == 2
    for i in range(L):
        p, o = f"model.layers.{i}.", f"{pre}h.{i}."
        kinds = ("weight", "bias") if spec.qkv_bias else ("weight",)
        for kind in kinds:
            out[o + f"self_attention.query_key_value.{kind}"] = _fuse_qkv(
                *(want[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"), spec.kv_heads, hd)
        for ours, theirs in (("self_attn.o_proj", "self_attention.dense"),
                             ("mlp.up_proj", "mlp.dense_h_to_4h"),
                             ("mlp.down_proj", "mlp.dense_4h_to_h")):
            for kind in ("weight", "bias"):
                if p + f"{ours}.{kind}" in want:
                    out[o + f"{theirs}.{kind}"] = want[p + f"{ours}.{kind}"]
        norms = ((("input_layernorm", "ln_attn"), ("post_attention_layernorm", "ln_mlp")) if two
                 else (("input_layernorm", "input_layernorm"),
                       ("post_attention_layernorm", "post_attention_layernorm")))
        for ours, theirs in norms:
            for kind in ("weight", "bias"):
                if p + f"{ours}.{kind}" in want:
                    out[o + f"{theirs}.{kind}"] = want[p + f"{ours}.{kind}"]
    return want, out


@pytest.mark.parametrize("spec", [FALCON, FALCON_MQA, BLOOM, GLM], ids=lambda s: s.name)
def test_hf_checkpoint_names(tmp_path, spec):
    from safetensors.torch import save_file
    want, ck = _hf_tensors(spec)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ck.items()}, str(path))
    src = SafetensorsSource(str(path), spec)
    assert set(src.shapes) == set(want)
    for name, t in want.items():
        assert src.shapes[name] == tuple(t.shape), name
        assert torch.equal(src.get(name), t), name
