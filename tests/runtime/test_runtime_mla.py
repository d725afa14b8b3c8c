"""DeepSeek-V3 style in the runtime: MLA attention (cached latent + rope key, naive expansion through
kv_b_proj), sigmoid-routed MoE with an fp32 score-correction bias and shared experts, dense leading
layers. Meta inventory = planner inventory (the catalog's DeepSeek-V3 on meta only), measured
weights and KV equal to the prediction to the byte and activations within 2% on CPU launches,
attention against an explicit reference, cached decode = full recompute, HF checkpoint names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from planner import catalog
from planner.memory import Workload, estimate
from planner.spec import inventory, param_count
from runtime.model import KVCache, Layout, build, check_buildable, meta_inventory
from runtime.weights import SafetensorsSource, materialize_random, random_tensor
from runtime.cli import TOLERANCES
from runtime_testutil import (DEEPSEEK, assert_cached_decode_matches, launch, launch_and_check,
                              make_plan, report_of)

V3 = next(e.spec for e in catalog.entries() if e.spec.name == "deepseek-ai/DeepSeek-V3")


@pytest.mark.parametrize("spec", [DEEPSEEK, V3], ids=lambda s: s.name)
def test_inventory_equals_meta_model(spec):
    check_buildable(spec, 4096)
    got = meta_inventory(spec)  # meta device: nothing is allocated (671B parameters)
    assert got == {t.name: tuple(t.shape) for t in inventory(spec)}
    assert sum(torch.Size(s).numel() for s in got.values()) == param_count(spec)


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8", "int8", "int4"])
@pytest.mark.parametrize("tp", [1, 2])
def test_kv_cache_bytes_equal_prediction(fmt, tp):
    """One latent of kv_lora + rope per token per layer, the same on every TP rank."""
    wl = Workload(2, 60, 8)
    pred = estimate(DEEPSEEK, "fp16", fmt, tp, 1, wl, "runtime", device="cpu").ranks[0].kv_cache
    cache = KVCache(DEEPSEEK, fmt, tp, 2, 68, torch.device("cpu"))
    assert cache.nbytes == pred


CASES = [("fp16", 1), ("int8", 1), ("int4-g128", 1), ("int8", 2), ("int4-g128", 2)]


@pytest.mark.parametrize("weights,tp", CASES, ids=[f"{w}-tp{t}" for w, t in CASES])
def test_measured_equals_predicted(tmp_path, weights, tp):
    launch_and_check(tmp_path, DEEPSEEK, weights, tp)


def test_quantized_kv_launch(tmp_path):
    plan = tmp_path / "plan.yaml"
    doc = make_plan(str(plan), DEEPSEEK, "bf16", "int8", 1)
    proc = launch(str(plan), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = report_of(proc)["ranks"][0]["lines"]
    pred = doc["prediction"]["ranks"][0]["bytes"]
    assert lines["kv_cache"]["measured"] == pred["kv_cache"]
    assert abs(lines["activations"]["measured"] - pred["activations"]) \
        <= TOLERANCES["activations"] * pred["activations"]


def test_prediction_models_mla_transients():
    """At bf16 the peak is the attention's: q, the expanded k_nope/v of every cached token, K and
    the padded V (measured equal; runtime/NOTES.md)."""
    det = estimate(DEEPSEEK, "bf16", "fp16", 1, 1, Workload(2, 64, 4), "runtime",
                   device="cpu").ranks[0]
    assert det.activations == 559_104
    acts = det.detail["activations"]
    assert acts["attn.v_pad.kv"] == 128 * 8 * (32 + 32) * 2
    assert acts["attn.v_pad.v_pad"] == acts["attn.v_pad.k"] == 128 * 8 * 48 * 2


# -- numerics -----------------------------------------------------------------------------------

def _model(seed=3):
    torch.set_grad_enabled(False)
    model = build(DEEPSEEK, Layout(weights="fp32", act_dtype=torch.float32))
    materialize_random(model, seed=seed)
    return model


def _w(lin):
    return lin.packed["weight"].float()


def test_mla_attention_matches_reference():
    """The layer's attention against the MLA formula written out (fp32, no cache tricks)."""
    spec, model = DEEPSEEK, _model()
    att = model.model.layers[0].self_attn
    b, s = 2, 7
    x = torch.randn(b, s, spec.hidden, generator=torch.Generator().manual_seed(1))
    cache = KVCache(spec, "bf16", 1, b, 8, torch.device("cpu"))
    cache.data = cache.data.float()  # an fp32 cache for the comparison
    rope = model.rope(0, s, torch.float32)
    got = att(x, 0, cache, 0, rope)

    H, nope, r, vd, L = spec.heads, spec.qk_nope_dim, spec.qk_rope_dim, spec.v_head_dim, \
        spec.kv_lora_rank

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + spec.norm_eps) * w

    q = rms(x @ _w(att.q_a_proj).T, att.q_a_layernorm.weight) @ _w(att.q_b_proj).T
    q = q.view(b, s, H, nope + r)
    kva = x @ _w(att.kv_a_proj_with_mqa).T
    c, kpe = rms(kva[..., :L], att.kv_a_layernorm.weight), kva[..., L:]
    kv = (c @ _w(att.kv_b_proj).T).view(b, s, H, nope + vd)
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, r, 2).float() / r))
    ang = torch.outer(torch.arange(s).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(t):  # t [.., s, r] with s at dim -2
        h1, h2 = t[..., :r // 2], t[..., r // 2:]
        return t * cos + torch.cat([-h2, h1], -1) * sin

    qr = rot(q[..., nope:].transpose(1, 2))  # [b, H, s, r]
    kr = rot(kpe.unsqueeze(1))  # [b, 1, s, r]
    qf = torch.cat([q[..., :nope].transpose(1, 2), qr], -1)
    kf = torch.cat([kv[..., :nope].transpose(1, 2), kr.expand(b, H, s, r)], -1)
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(nope + r)
    scores = scores.masked_fill(torch.ones(s, s).triu(1).bool(), float("-inf"))
    o = scores.softmax(-1) @ kv[..., nope:].transpose(1, 2)  # [b, H, s, vd]
    want = o.transpose(1, 2).reshape(b, s, H * vd) @ _w(att.o_proj).T
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_cached_decode_equals_full_recompute():
    assert_cached_decode_matches(DEEPSEEK)


def test_deepseek_routing():
    """Top-k on sigmoid scores + the fp32 correction bias; weights are the chosen experts' scores
    (without the bias), normalized; the shared expert always adds."""
    model = _model()
    moe = model.model.layers[1].mlp
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    assert moe.shared_experts is not None and model.model.layers[0].mlp.__class__.__name__ == "MLP"
    x = torch.randn(5, DEEPSEEK.hidden, generator=torch.Generator().manual_seed(2))
    scores = torch.sigmoid(x @ _w(moe.gate).T)
    bias = torch.tensor([0.0, 10.0, 0.0, 10.0])
    moe.gate.e_score_correction_bias.copy_(bias)
    w, idx = moe.route(x)
    assert sorted(idx[0].tolist()) == [1, 3]  # the bias decides the choice
    assert torch.allclose(w, scores.gather(-1, idx))  # the weights ignore it
    out = moe(x)
    ws = w / w.sum(-1, keepdim=True)
    want = moe.shared_experts(x)
    for j in range(2):
        for e in (1, 3):
            sel = idx[:, j] == e
            want[sel] += ws[sel, j:j + 1] * moe.experts[e](x[sel])
    assert torch.allclose(out, want, atol=1e-6)


# -- checkpoint names ---------------------------------------------------------------------------

def _interleave(rows: torch.Tensor, blocks: int, block: int, off: int, r: int) -> torch.Tensor:
    """Rotate-half rope rows [evens | odds] back to the checkpoint's interleaved pairs."""
    y = rows.reshape(blocks, block, -1).clone()
    part = y[:, off:off + r]
    y[:, off:off + r] = part.reshape(blocks, 2, r // 2, -1).transpose(1, 2).reshape(blocks, r, -1)
    return y.reshape(rows.shape)


def test_hf_checkpoint_names_fp8_and_rope_layout(tmp_path):
    from safetensors.torch import save_file
    spec = DEEPSEEK
    want = {t.name: random_tensor(t, 5) for t in inventory(spec)}
    ck = dict(want)
    H, qd, nope, r, L = spec.heads, spec.q_head_dim, spec.qk_nope_dim, spec.qk_rope_dim, \
        spec.kv_lora_rank
    for i in range(spec.layers):
        p = f"model.layers.{i}.self_attn."
        ck[p + "q_b_proj.weight"] = _interleave(want[p + "q_b_proj.weight"], H, qd, nope, r)
        ck[p + "kv_a_proj_with_mqa.weight"] = _interleave(want[p + "kv_a_proj_with_mqa.weight"],
                                                          1, L + r, L, r)
    # one expert in fp8 with 128 x 128 block scales, as the published checkpoint stores linears
    name = "model.layers.1.mlp.experts.0.down_proj.weight"
    w = want[name]
    sc = torch.full((2, 2), 0.25)  # [ceil(256 / 128), ceil(256 / 128)] block scales
    sc[1, 0] = 1.0
    blocks = sc.repeat_interleave(128, 0).repeat_interleave(128, 1)
    ck[name] = (w / blocks).to(torch.float8_e4m3fn)
    ck[name + "_scale_inv"] = sc
    want[name] = ck[name].float() * blocks
    # the multi-token-prediction layer (layer index = layers) is in the checkpoint, not the model
    ck[f"model.layers.{spec.layers}.eh_proj.weight"] = torch.zeros(4, 4)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ck.items()}, str(path))
    src = SafetensorsSource(str(path), spec)
    assert set(src.shapes) == set(want)
    for n, t in want.items():
        assert src.shapes[n] == tuple(t.shape), n
        assert torch.equal(src.get(n), t), n
