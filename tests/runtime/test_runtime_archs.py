"""The architecture features of the newer families in the runtime's one generic block: QK-norm
(RMS and L2), sliding-window and chunked layers with a ring-buffer KV cache, NoPE layers, sandwich
norms, Gemma's norm offset / embedding scale / softcaps, attention sinks, biases on the router,
experts and LM head, the three routings, interleaved MoE layers, a shared expert of its own width
and MLA without a query LoRA. For one small spec per architecture: meta inventory = planner
inventory, a CPU launch whose weights and KV cache equal the prediction to the byte and whose
activations (each phase and sub-block too) are within the CPU tolerance (2%), with a context
three times the window; and cached decode past the window / chunk equal to a full recompute
with the same masks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from planner.spec import ModelSpec, inventory, param_count
from runtime.model import (KVCache, Layout, RuntimeError_, build, check_buildable, meta_inventory,
                           window_mask)
from runtime.weights import materialize_random
from runtime.cli import TOLERANCES
from runtime_testutil import assert_phases, launch, make_plan, report_of

W, C = 8, 16  # sliding window, attention chunk
COMMON = dict(layers=4, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=256,
              rope_theta=10000.0, max_context=4096, norm_eps=1e-6)

QWEN3 = ModelSpec(name="tiny-qwen3", family="qwen3", **{**COMMON, "head_dim": 32}, qk_norm="rms",
                  tied_embeddings=True)
QWEN3_MOE = ModelSpec(name="tiny-qwen3-moe", family="qwen3_moe", **COMMON, qk_norm="rms",
                      experts=4, experts_per_token=2, expert_ffn=32, moe_step=2,
                      mlp_only_layers=(3,))
GEMMA2 = ModelSpec(name="tiny-gemma2", family="gemma2", **COMMON, activation="gelu",
                   tied_embeddings=True, layer_types=("sliding", "full") * 2, sliding_window=W,
                   sandwich_norms=True, norm_offset=True, embed_scale=True, attn_softcap=50.0,
                   final_softcap=30.0)
GEMMA3 = ModelSpec(name="tiny-gemma3", family="gemma3", **{**COMMON, "layers": 6},
                   activation="gelu", tied_embeddings=True,
                   layer_types=("sliding",) * 5 + ("full",), sliding_window=W, qk_norm="rms",
                   sandwich_norms=True, norm_offset=True, embed_scale=True)
GPT_OSS = ModelSpec(name="tiny-gpt-oss", family="gpt_oss", **COMMON,
                    layer_types=("sliding", "full") * 2, sliding_window=W, attn_sinks=True,
                    qkv_bias=True, o_bias=True, experts=4, experts_per_token=2, expert_ffn=64,
                    router_linear_bias=True, expert_bias=True, routing="softmax_topk")
LLAMA4 = ModelSpec(name="tiny-llama4", family="llama4", **COMMON,
                   layer_types=("chunked",) * 3 + ("full",), attention_chunk=C, nope_layers=(3,),
                   qk_norm="l2", experts=4, experts_per_token=1, expert_ffn=64, shared_experts=1,
                   shared_expert_ffn=96, moe_step=2, routing="sigmoid")
PHIMOE = ModelSpec(name="tiny-phimoe", family="phimoe", **COMMON, norm="layernorm",
                   lm_head_bias=True, qkv_bias=True, o_bias=True, experts=4, experts_per_token=2,
                   expert_ffn=64)
DEEPSEEK_V2 = ModelSpec(name="tiny-deepseek-v2-lite", family="deepseek_v2",
                        **{**COMMON, "kv_heads": 4}, q_lora_rank=0, kv_lora_rank=64,
                        qk_nope_dim=16, qk_rope_dim=8, v_head_dim=16, experts=4,
                        experts_per_token=2, shared_experts=2, expert_ffn=32, dense_layers=1)
GLM4 = ModelSpec(name="tiny-glm4", family="glm4", **COMMON, sandwich_norms=True, qkv_bias=True)

SPECS = [QWEN3, QWEN3_MOE, GEMMA2, GEMMA3, GPT_OSS, LLAMA4, PHIMOE, DEEPSEEK_V2, GLM4]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_inventory_equals_meta_model(spec):
    check_buildable(spec, 3 * C)
    got = meta_inventory(spec)
    assert got == {t.name: tuple(t.shape) for t in inventory(spec)}
    assert sum(torch.Size(s).numel() for s in got.values()) == param_count(spec)


# -- masks and the ring buffer --------------------------------------------------------------------

def test_window_masks():
    m = window_mask("sliding", 3, 0, 6, 6, torch.float32)
    vis = (m == 0).int().tolist()
    assert vis[5] == [0, 0, 0, 1, 1, 1] and vis[1] == [1, 1, 0, 0, 0, 0]
    m = window_mask("chunked", 4, 0, 6, 6, torch.float32)
    vis = (m == 0).int().tolist()
    assert vis[3] == [1, 1, 1, 1, 0, 0] and vis[5] == [0, 0, 0, 0, 1, 1]


def test_ring_buffer_holds_the_window():
    cache = KVCache(GEMMA3, "fp16", 1, 2, 3 * W, torch.device("cpu"))
    assert [cache.capacity(i) for i in range(6)] == [W] * 5 + [3 * W]
    kv, hd = 2, 16
    assert cache.nbytes == 2 * 2 * kv * hd * 2 * (5 * W + 3 * W)
    k = torch.arange(3 * W, dtype=torch.float32).view(1, -1, 1, 1).expand(2, -1, kv, hd)
    cache.write(0, 0, k, k)  # a prompt of 3 windows: the last W tokens stay, token p in slot p % W
    got, _ = cache.read(0, W, torch.float32)
    assert got[0, 0, :, 0].tolist() == [16, 17, 18, 19, 20, 21, 22, 23]
    cache.write(0, 3 * W, k[:, :1] + 100, k[:, :1] + 100)  # position 24 -> slot 0
    got, _ = cache.read(0, W, torch.float32)
    assert got[0, 0, 0, 0].item() == 100


# -- cached decode past the window = full recompute -------------------------------------------------

def _fp32_cache(spec, tokens):
    """A lossless cache for the comparison (the recompute attends over its own fp32 K/V)."""
    cache = KVCache(spec, "bf16", 1, 2, tokens, torch.device("cpu"))
    cache._data = [d.float() for d in cache._data]
    return cache


def _logits(model, ids, cache, pos):
    """Last-position fp32 logits of one step (the greedy step's own path)."""
    b, s = ids.shape
    rope = model.rope(pos, s, model.lay.act_dtype)
    h = model.embed(ids, pos)
    for block in model.model.layers:
        block(h, cache, pos, rope)
    return model.head_logits(h[:, -1, :])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_cached_decode_past_the_window_equals_recompute(spec):
    """Prompt 12 (past the window of 8), then cached decode to 20 tokens (past the chunk of 16):
    each step's logits equal those of re-running the whole sequence, whose prompt is then longer
    than the window and goes through the masked path."""
    torch.set_grad_enabled(False)
    model = build(spec, Layout(weights="fp32", act_dtype=torch.float32))
    materialize_random(model, seed=3)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, spec.vocab, (2, 12), generator=g)
    cache = _fp32_cache(spec, 20)
    got = _logits(model, seq, cache, 0)
    for step in range(8):
        want = _logits(model, seq, _fp32_cache(spec, 20), 0)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (step, (got - want).abs().max())
        nxt = got.argmax(-1)
        assert torch.equal(nxt, want.argmax(-1))
        seq = torch.cat([seq, nxt.view(2, 1)], dim=1)
        if seq.shape[1] < 20:
            got = _logits(model, nxt.view(2, 1), cache, seq.shape[1] - 1)
        else:
            break


# -- CPU launches: predicted vs measured ------------------------------------------------------------

LAUNCHES = ([(s, "bf16", "fp16", 1) for s in SPECS]
            + [(GEMMA2, "fp16", "fp16", 1), (GPT_OSS, "int8", "fp16", 1),
               (LLAMA4, "int8", "fp16", 1), (GEMMA3, "bf16", "int8", 1),
               (GPT_OSS, "bf16", "int4", 2), (LLAMA4, "bf16", "fp16", 2)])


def launch_archs(tmp_path, spec, weights, kv="fp16", tp=1, batch=2, prompt=24, new=8):
    """Launch one plan (context 32: four windows, two chunks) and return the prediction and the
    report's ranks."""
    plan = tmp_path / f"{spec.name}-{weights}-{kv}-tp{tp}.yaml"
    doc = make_plan(str(plan), spec, weights, kv, tp, batch, prompt, new)
    proc = launch(str(plan), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    rep = report_of(proc)
    assert rep["ok"] and len(rep["ranks"]) == tp
    assert_phases(rep)
    return doc["prediction"]["ranks"], rep["ranks"]


@pytest.mark.parametrize("spec,weights,kv,tp", LAUNCHES,
                         ids=[f"{s.name}-{w}-kv{k}-tp{t}" for s, w, k, t in LAUNCHES])
def test_measured_equals_predicted(tmp_path, spec, weights, kv, tp):
    pred, ranks = launch_archs(tmp_path, spec, weights, kv, tp)
    for r in ranks:
        b, lines = pred[r["rank"]]["bytes"], r["lines"]
        assert lines["weights"]["measured"] == b["weights"]
        assert lines["kv_cache"]["measured"] == b["kv_cache"]
        act = lines["activations"]["measured"]
        tol = TOLERANCES["activations"]
        assert abs(act - b["activations"]) <= tol * b["activations"], (act, b["activations"])


def test_kv_cache_is_the_window_not_the_context():
    """The runtime profile holds min(context, window) tokens on sliding / chunked layers."""
    from planner.memory import Workload, estimate
    for spec in (GEMMA2, GEMMA3, GPT_OSS, LLAMA4):
        for ctx in (6, 32, 4096):
            pred = estimate(spec, "bf16", "fp16", 1, 1, Workload(2, ctx, 0), "runtime",
                            device="cpu").ranks[0].kv_cache
            assert KVCache(spec, "fp16", 1, 2, ctx, torch.device("meta")).nbytes == pred
