"""Search, capacity and recommend: the GLM-130B hardware table of the seed as tests, capacity at the
exact boundary, mixed GPU sets, and the CLI's answers."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.catalog import lookup
from planner.hardware import parse_gpu_set
from planner.memory import Workload, estimate
from planner.precision import kv_format, weight_format
from planner.search import evaluate, finish, make_problem, max_batch, max_context, search
from planner_testutil import run_cli

GLM = lookup("glm-130b").spec
# The seed 000 speed table: GLM-130B generating up to 2048 tokens at batch 1.
SEED_WORKLOAD = Workload(1, 1024, 1024)


def glm_fits(gpus: str, fmt: str, tp: int) -> bool:
    p = make_problem(GLM, parse_gpu_set(gpus), SEED_WORKLOAD, "runtime")
    return evaluate(p, weight_format(fmt), kv_format("fp16"), tp, 1).fits


@pytest.mark.parametrize("gpus,fmt,tp,fits", [
    ("4x3090", "int4", 4, True),        # "4 * RTX 3090, 24 GB, INT4"
    ("4x3090", "int8", 4, False),
    ("4x3090", "fp16", 4, False),
    ("8x2080ti", "int4", 8, True),      # "8 * RTX 2080 Ti, 11 GB, INT4"
    ("8x2080ti", "int8", 8, False),
    ("8xv100-32g", "int8", 8, True),    # "8 * V100, 32 GB, INT8"
    ("8xa100-40g", "fp16", 8, True),    # "8 * A100, 40 GB, FP16"
])
def test_glm130b_hardware_table(gpus, fmt, tp, fits):
    assert glm_fits(gpus, fmt, tp) is fits


def test_recommend_glm_on_4x3090_picks_int4_tp4():
    p = make_problem(GLM, parse_gpu_set("4x3090"), SEED_WORKLOAD, "runtime")
    plans, rejected = search(p, ["fp16", "int8", "int4"], ["fp16"])
    # Only INT4 fits (as the seed says); TP 4 ranks first, pipeline layouts of INT4 follow.
    assert {c.weights.key for c in plans} == {"int4"}
    assert (plans[0].tp, plans[0].pp) == (4, 1)
    assert {(c.tp, c.pp) for c in plans} == {(4, 1), (2, 2), (1, 4)}
    reasons = {(r.weights, r.tp, r.pp): r.reason for r in rejected}
    assert reasons[("int8", 4, 1)].startswith("does not fit")
    best = plans[0]
    assert best.max_batch >= 1 and best.max_context >= 2048


MODELS = st.sampled_from(["smollm2-135m", "llama-2-7b", "mistral-7b", "opt-13b", "qwen2.5-7b",
                          "mixtral-8x7b", "phi-3-mini", "gpt2"])
SETS = st.sampled_from(["1x3090", "2x4090", "4x3090", "1xa100-80g", "2x4090+1x3090", "1xl4",
                        "2xt4"])
FMTS = st.sampled_from(["fp16", "int8", "int4-g128", "nf4", "int4"])
ENGINES = st.sampled_from(["runtime", "vllm", "transformers"])


@settings(max_examples=40, deadline=None)
@given(MODELS, SETS, FMTS, ENGINES, st.integers(1, 4096), st.integers(0, 256))
def test_capacity_is_exact_at_the_boundary(model, gpus, fmt, engine, prompt, new):
    spec = lookup(model).spec
    wl = Workload(1, prompt, new)
    p = make_problem(spec, parse_gpu_set(gpus), wl, engine)
    try:
        c = evaluate(p, weight_format(fmt), kv_format("fp16"), 1, 1)
    except Exception:
        return
    usable = c.usable[0]

    def fits(b, pr, nw):
        est = estimate(spec, fmt, "fp16", 1, 1, Workload(b, pr, nw), p.engine)
        return est.ranks[0].total <= usable

    b = max_batch(p, c, wl)
    if b:
        assert fits(b, prompt, new) and not fits(b + 1, prompt, new)
    else:
        assert not fits(1, prompt, new)
    ctx, capped = max_context(p, c, wl)
    if ctx and not capped:
        assert fits(1, ctx - new, new) and not fits(1, ctx + 1 - new, new)
    if capped:
        assert ctx == spec.max_context and fits(1, ctx - new, new)


@settings(max_examples=25, deadline=None)
@given(MODELS, st.sampled_from(["2x4090+1x3090", "1xa100-80g+2xl4", "1x3090+1x2080ti",
                                "2xh100-sxm+2xa10"]), ENGINES)
def test_mixed_sets_never_overfill_a_card(model, gpus, engine):
    p = make_problem(lookup(model).spec, parse_gpu_set(gpus), Workload(1, 2048, 256), engine)
    plans, _ = search(p, ["fp16", "int8", "int4"], ["fp16"])
    for c in plans:
        for r, d in zip(c.estimate.ranks, c.devices):
            assert r.total <= d.memory_bytes
        if c.max_batch:
            est = estimate(p.spec, c.weights, c.kv, c.tp, c.pp,
                           Workload(c.max_batch, 2048, 256), p.engine)
            assert all(r.total <= d.memory_bytes for r, d in zip(est.ranks, c.devices))


def test_tp_that_does_not_divide_the_heads_is_rejected_with_the_reason():
    p = make_problem(lookup("llama-2-7b").spec, parse_gpu_set("3x3090"), Workload(1, 128, 0),
                     "runtime")
    plans, rejected = search(p, ["fp16"], ["fp16"], tp=3)
    assert plans == []
    assert [r.reason for r in rejected] == ["TP 3 does not divide the 32 attention heads"]


def test_fp8_rejected_on_cards_without_it():
    p = make_problem(lookup("llama-2-7b").spec, parse_gpu_set("1x3090"), Workload(1, 128, 0),
                     "runtime")
    _, rejected = search(p, ["fp8"], ["fp16"])
    assert any("compute capability 8.9" in r.reason for r in rejected)
    p = make_problem(lookup("llama-2-7b").spec, parse_gpu_set("1xh100-sxm"), Workload(1, 128, 0),
                     "runtime")
    plans, _ = search(p, ["fp8"], ["fp16"])
    assert plans


def test_vllm_kv_blocks():
    spec = lookup("llama-2-7b").spec
    p = make_problem(spec, parse_gpu_set("1xa100-80g"), Workload(1, 2048, 0), "vllm")
    c = finish(p, evaluate(p, weight_format("fp16"), kv_format("fp16"), 1, 1))
    r = c.estimate.ranks[0]
    pool = int(p.devices[0].memory_bytes * 0.9) - r.weights - r.activations - r.overhead
    assert c.kv_blocks == pool // (16 * 524_288)
    assert c.kv_cache_tokens == c.kv_blocks * 16


def test_recommend_cli_json_shapes():
    out = run_cli("recommend", "--gpus", "4x3090", "--model", "glm-130b", "--json",
                  "--context", "2048", "--weights", "fp16,int8,int4")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    plan = doc["plans"][0]
    for k in ("precision", "tp", "pp", "gpus", "fits", "max_batch", "max_context", "ranks"):
        assert k in plan
    assert plan["precision"] == {"weights": "int4", "kv_cache": "fp16"}
    assert {"rank", "bytes"} <= set(plan["ranks"][0])
    assert all({"precision", "tp", "reason"} <= set(r) for r in doc["rejected"])


def test_recommend_all_models():
    out = run_cli("recommend", "--gpus", "4x3090", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    names = {m["model"] for m in doc["models"]}
    assert "THUDM/GLM-130B" in names and "deepseek-ai/DeepSeek-V3" in names
    by = {m["model"]: m for m in doc["models"]}
    assert by["deepseek-ai/DeepSeek-V3"]["best"] is None
    assert "does not fit" in by["deepseek-ai/DeepSeek-V3"]["reason"]
    assert by["gpt2"]["best"]["fits"] is True
    table = run_cli("recommend", "--gpus", "4x3090")
    assert table.returncode == 0 and "GLM-130B" in table.stdout


def test_nothing_fits_exits_1_with_the_shortfall():
    out = run_cli("recommend", "--gpus", "1x3090", "--model", "glm-130b")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "more on one GPU" in lines[0] and "Traceback" not in out.stderr


def test_capacity_cli():
    out = run_cli("capacity", "--model", "llama-2-7b", "--gpus", "1xa100-80g", "--weights", "fp16",
                  "--context", "4096", "--engine", "vllm", "--gpu-memory-utilization", "0.9",
                  "--block-size", "16", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    for k in ("max_batch", "max_context", "kv_cache_tokens", "kv_blocks"):
        assert isinstance(doc[k], int)
    assert doc["kv_cache_tokens"] == doc["kv_blocks"] * 16
    out = run_cli("capacity", "--model", "llama-2-7b", "--gpus", "1x3090", "--batch", "4",
                  "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["max_context"] > 0


def test_sweep_formats():
    args = ["sweep", "--model", "opt-13b", "--batch", "1,8", "--context", "2048,4096",
            "--weights", "fp16,int8", "--kv-cache", "fp16,int8"]
    t = run_cli(*args)
    assert t.returncode == 0 and "b8·4096" in t.stdout
    csv = run_cli(*args, "--format", "csv")
    assert csv.stdout.splitlines()[0] == "weights,kv_cache,batch,context,total_bytes,fits"
    assert len(csv.stdout.splitlines()) == 1 + 2 * 2 * 2 * 2
    md = run_cli(*args, "--format", "markdown", "--gpus", "1xa100-40g")
    assert "| weights | KV |" in md.stdout and "✗" in md.stdout


@pytest.mark.parametrize("gpus,words", [
    ("4x3091", "3090"), ("0x3090", "at least 1"), ("x3090", ""), ("4x", ""), ("-2x3090", ""),
])
def test_bad_gpu_sets(gpus, words):
    out = run_cli("recommend", "--gpus", gpus, "--model", "gpt2")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("planner: error:") and words in lines[0]


@pytest.mark.parametrize("flag,value,words", [
    ("--engine", "vlm", "vllm"), ("--weights", "int3", "unknown weight format"),
    ("--objective", "speed", "invalid choice"), ("--gpu-memory-utilization", "1.5", "(0, 1]"),
])
def test_bad_recommend_flags(flag, value, words):
    out = run_cli("recommend", "--gpus", "4x3090", "--model", "gpt2", flag, value)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


def test_plan_file_round_trip_through_the_cli(tmp_path):
    path = str(tmp_path / "plan.yaml")
    out = run_cli("recommend", "--gpus", "4x3090", "--model", "glm-130b", "--context", "2048",
                  "-o", path)
    assert out.returncode == 0, out.stderr
    from planner.plan import load_plan

    plan = load_plan(path)
    assert (plan.weights, plan.tp) == ("int4-g128-zp", 4)
    again = run_cli("recommend", "--gpus", "4x3090", "--model", "glm-130b", "--context", "2048",
                    "-o", path)
    assert again.returncode == 2 and "--force" in again.stderr
    assert run_cli("recommend", "--gpus", "4x3090", "--model", "glm-130b", "--context", "2048",
                   "-o", path, "--force").returncode == 0
    exp = run_cli("export", path, "--engine", "vllm")
    assert exp.returncode == 0, exp.stderr
    assert "--tensor-parallel-size 4" in exp.stdout
    bad = run_cli("export", path, "--engine", "llama.cpp")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_tampered_plan_is_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    assert run_cli("recommend", "--gpus", "2x4090", "--model", "llama-2-7b", "-o",
                   str(path)).returncode == 0
    text = path.read_text()
    import re

    total = re.search(r"total: (\d+)", text).group(1)
    path.write_text(text.replace(f"total: {total}", f"total: {int(total) - 1}", 1))
    out = run_cli("export", str(path), "--engine", "vllm")
    assert out.returncode == 2 and "plan.yaml" in out.stderr and "hash" in out.stderr


def test_gpus_command():
    out = run_cli("gpus", "--json")
    assert out.returncode == 0
    names = {g["name"] for g in json.loads(out.stdout)["gpus"]}
    assert {"rtx-3090", "a100-40g", "h100-sxm", "mi300x"} <= names
    det = run_cli("gpus", "--detect")
    assert det.returncode in (0, 2)
    if det.returncode == 2:  # no NVIDIA driver here (CI)
        assert "no NVIDIA driver" in det.stderr and len(det.stderr.strip().splitlines()) == 1
