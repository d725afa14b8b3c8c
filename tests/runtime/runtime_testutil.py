"""Helpers shared by the runtime tests (a plain module: no conftest.py here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from planner.memory import Workload, estimate
from planner.plan import plan_document, plan_hash, write_plan
from planner.sources import ModelSource
from planner.spec import ModelSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Small specs: every K per rank (hidden, heads x head_dim / TP, ffn / TP) a multiple of 128 so
# int4-g128 is feasible at TP 1 and TP 2.
LLAMA = ModelSpec(name="tiny-llama-gqa", family="llama", layers=2, hidden=256, heads=8, kv_heads=2,
                  head_dim=32, ffn=512, vocab=1000, qkv_bias=True, rope_theta=10000.0,
                  max_context=4096)
OPT = ModelSpec(name="tiny-opt", family="opt", layers=2, hidden=256, heads=4, kv_heads=4,
                head_dim=64, ffn=1024, vocab=1001, gated_ffn=False, activation="relu",
                tied_embeddings=True, norm="layernorm", qkv_bias=True, o_bias=True, mlp_bias=True,
                learned_positions=2050, position_offset=2, max_context=2048)
MIXTRAL = ModelSpec(name="tiny-mixtral", family="mixtral", layers=2, hidden=256, heads=8,
                    kv_heads=4, head_dim=32, ffn=512, vocab=1000, experts=4, experts_per_token=2,
                    expert_ffn=512, rope_theta=1e6, max_context=4096)


def make_plan(path: str, spec: ModelSpec, weights: str = "fp16", kv: str = "fp16", tp: int = 1,
              batch: int = 2, prompt: int = 64, new: int = 4, source=("config", "test"),
              quantize_lm_head: bool = False) -> dict:
    est = estimate(spec, weights, kv, tp, 1, Workload(batch, prompt, new), "runtime", device="cpu",
                   quantize_lm_head=quantize_lm_head)
    doc = plan_document(est, ModelSource(spec, source[0], source[1]),
                        {"set": f"cpu:{tp}", "gpus": []})
    write_plan(path, doc, force=True)
    return doc


def rewrite(path: str, doc: dict) -> None:
    """Write an edited plan with a fresh hash (a legitimate plan with other numbers)."""
    doc = dict(doc)
    doc["hash"] = plan_hash(doc)
    write_plan(path, doc, force=True)


_LAUNCH = ("import sys; from planner.cli import main as m; import planner.cli as c; "
           "sys.exit(m(['launch', *sys.argv[1:]]))")
_FALLBACK = ("import argparse, sys\n"
             "from planner.errors import PlannerError\n"
             "from planner.launch import add_parser\n"
             "p = argparse.ArgumentParser(); s = p.add_subparsers(); add_parser(s)\n"
             "a = p.parse_args(['launch', *sys.argv[1:]])\n"
             "try:\n    sys.exit(a.func(a))\n"
             "except PlannerError as e:\n    print('planner launch: ' + str(e), file=sys.stderr); "
             "sys.exit(e.exit_code)\n")


def launch(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """`planner launch ARGS` in a subprocess (through planner.launch even before the CLI lists it)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", _FALLBACK, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env, **kw)


def report_of(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])

# Families added with parallel attention, ALiBi and GeGLU (tests/runtime/test_runtime_families.py).
FALCON = ModelSpec(name="tiny-falcon", family="falcon", layers=2, hidden=256, heads=8, kv_heads=2,
                   head_dim=32, ffn=1024, vocab=1000, gated_ffn=False, activation="gelu",
                   gelu_approx="none", tied_embeddings=False, norm="layernorm", parallel_attn=True, parallel_norms=2,
                   rope_theta=10000.0, max_context=2048)
"""Falcon-40B/180B style: ln_attn and ln_mlp, GQA, no biases, separate LM head."""
FALCON_MQA = ModelSpec(name="tiny-falcon-mqa", family="falcon", layers=2, hidden=256, heads=8,
                       kv_heads=1, head_dim=32, ffn=1024, vocab=1000, gated_ffn=False,
                       activation="gelu", gelu_approx="none", tied_embeddings=True,
                       norm="layernorm", parallel_attn=True, parallel_norms=1, rope_theta=10000.0, max_context=2048)
"""Falcon-7B style: one shared input norm, multi-query attention, tied embeddings."""
BLOOM = ModelSpec(name="tiny-bloom", family="bloom", layers=2, hidden=256, heads=8, kv_heads=8,
                  head_dim=32, ffn=1024, vocab=1000, gated_ffn=False, activation="gelu",
                  tied_embeddings=True, norm="layernorm", qkv_bias=True, o_bias=True,
                  mlp_bias=True, embed_norm=True, alibi=True, max_context=2048)
GLM = ModelSpec(name="tiny-glm", family="glm", layers=2, hidden=256, heads=8, kv_heads=8,
                head_dim=32, ffn=512, vocab=1000, gated_ffn=True, activation="gelu",
                gelu_approx="none", tied_embeddings=True, norm="layernorm", qkv_bias=True, o_bias=True, mlp_bias=True,
                rope_theta=10000.0, max_context=2048)

# DeepSeek-V3 style (tests/runtime/test_runtime_mla.py): MLA attention (q and kv low-rank, a cached
# latent of kv_lora + rope per token), 1 dense leading layer, then MoE layers with 4 routed experts
# (top-2, sigmoid + fp32 score-correction bias) and 1 shared expert. Every K per rank a multiple of
# 128 at TP 1 and TP 2 (q_b/kv_b read 128, o_proj 8 x 32 / TP, experts 256 / TP) for int4-g128.
DEEPSEEK = ModelSpec(name="tiny-deepseek-v3", family="deepseek_v3", layers=3, hidden=256, heads=8,
                     kv_heads=8, head_dim=32, ffn=512, vocab=1000, experts=4, experts_per_token=2,
                     shared_experts=1, expert_ffn=256, dense_layers=1, router_bias=True,
                     routing="sigmoid", q_lora_rank=128, kv_lora_rank=128, qk_nope_dim=32, qk_rope_dim=16,
                     v_head_dim=32, rope_theta=10000.0, norm_eps=1e-6, max_context=4096)


def launch_and_check(tmp_path, spec, weights: str, tp: int, kv: str = "fp16",
                     *extra: str) -> dict:
    """Make a plan, launch it, and assert what every CPU test of the runtime asserts: exit 0, one
    report per rank, weights and KV cache equal to the prediction to the byte, activations within
    the CPU tolerance (runtime.cli.TOLERANCES: 2%). Returns the report."""
    from runtime.cli import TOLERANCES
    tol = TOLERANCES["activations"]
    plan = tmp_path / "plan.yaml"
    doc = make_plan(str(plan), spec, weights, kv, tp)
    proc = launch(str(plan), "--json", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    rep = report_of(proc)
    assert rep["ok"] and len(rep["ranks"]) == tp
    for r in rep["ranks"]:
        pred = doc["prediction"]["ranks"][r["rank"]]["bytes"]
        lines = r["lines"]
        assert lines["weights"]["measured"] == pred["weights"]
        assert lines["kv_cache"]["measured"] == pred["kv_cache"]
        act = lines["activations"]
        assert abs(act["measured"] - pred["activations"]) <= tol * pred["activations"]
    assert_phases(rep)
    return rep


def assert_phases(rep: dict) -> None:
    """Every phase (prefill, decode) and sub-block of every rank within the tolerance: the walk
    is right moment by moment, not only at its peak."""
    for r in rep["ranks"]:
        for name, ph in r["phases"]["compare"].items():
            assert ph["ok"], (r["rank"], name, ph)
            for g, line in ph["groups"].items():
                assert line["ok"], (r["rank"], name, g, line)


def assert_cached_decode_matches(spec) -> None:
    """Prefill + cached decode gives the greedy tokens that re-running the whole sequence gives."""
    import torch

    from runtime.model import KVCache, Layout, build
    from runtime.weights import materialize_random

    torch.set_grad_enabled(False)
    model = build(spec, Layout(weights="bf16", act_dtype=torch.float32))
    materialize_random(model, seed=3)
    ids = torch.randint(0, spec.vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    cache = KVCache(spec, "fp16", 1, 2, 16, torch.device("cpu"))
    seq = ids
    nxt = model(ids, cache, 0)
    for step in range(3):
        full_cache = KVCache(spec, "fp16", 1, 2, 16, torch.device("cpu"))
        seq = torch.cat([seq, nxt.view(2, 1)], dim=1)
        want = model(seq, full_cache, 0)
        nxt = model(nxt.view(2, 1), cache, 12 + step)
        assert torch.equal(nxt, want)
