"""planner/generic.py: an architecture the planner has no features for, planned from transformers'
own model on the meta device (family ``generic``), and every way that can be refused."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time

import pytest

from planner import generic
from planner.errors import InfeasibleError, InputError
from planner.memory import Workload, estimate
from planner.spec import ModelSpec, inventory, param_count
from planner.units import fmt_count

from planner_testutil import REPO, run_cli


@pytest.fixture(scope="module")
def hf():
    """transformers and torch, or skip: the generic path needs both."""
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def hf_count(hf, cfg: dict) -> int:
    """transformers' own parameter count of the model a config describes (built on meta)."""
    import torch

    config = hf.AutoConfig.for_model(cfg["model_type"],
                                     **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = hf.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# Architectures with no feature set in the planner (planner/sources.py refuses their model_type),
# at transformers 5.24's defaults: the published sizes (OLMo-2 7B, Command-R 35B, StarCoder2 3B,
# Granite 3B-class, EXAONE 3 7.8B, OLMoE 1B-7B, GraniteMoE) plus a few small custom ones.
UNKNOWN = [
    {"model_type": "olmo2"},
    {"model_type": "cohere"},
    {"model_type": "starcoder2"},
    {"model_type": "granite"},
    {"model_type": "exaone"},
    {"model_type": "olmoe"},
    {"model_type": "granitemoe"},
    {"model_type": "cohere2"},  # 3 sliding : 1 full layers
    {"model_type": "olmo2", "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 512,
     "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000,
     "tie_word_embeddings": True},
]


@pytest.mark.parametrize("cfg", UNKNOWN, ids=lambda c: "-".join(str(v) for v in c.values())[:40])
def test_unknown_architecture_is_planned_generic(hf, cfg):
    spec = generic.spec_from_transformers(cfg, cfg["model_type"], "config.json")
    assert spec.family == "generic"
    assert param_count(spec) == hf_count(hf, cfg)  # every parameter, tied ones once
    assert spec.tensors and inventory(spec) == spec.tensors
    assert len({t.name for t in spec.tensors}) == len(spec.tensors)
    roles = {t.role for t in spec.tensors}
    assert {"embedding", "linear", "norm"} <= roles
    assert ("lm_head" in roles) != spec.tied_embeddings
    what = generic.inferred(spec)
    assert any(x.startswith("TP splits from module names: ") for x in what)
    assert any(x.startswith("KV cache: ") for x in what)
    assert generic.describe(spec).startswith("generic: ")
    one, two = (estimate(spec, "fp16", "fp16", tp, 1, Workload(2, 1024, 64), "vllm").ranks[0]
                for tp in (1, 2))
    assert one.weights > two.weights > one.weights // 2 - 1 and one.kv_cache == 2 * two.kv_cache
    assert estimate(spec, "int4-g128", "fp16", 2).ranks[0].weights < two.weights  # runtime engine
    # the KV cache comes from the config through the normal path: 2 x KV heads x head_dim per
    # token per layer (runtime engine: no blocks; a sliding layer holds at most its window)
    est = estimate(spec, "fp16", "fp16", 1, 1, Workload(2, 1024, 64), "runtime")
    held = sum(min(1088, spec.window_of(i) or 1088) for i in range(spec.layers))
    assert est.ranks[0].kv_cache == 2 * held * 2 * spec.kv_heads * spec.head_dim * 2


def test_published_dtype_is_the_configs(hf):
    small = {"model_type": "olmo2", "num_hidden_layers": 2}
    bf16 = generic.spec_from_transformers({**small, "torch_dtype": "bfloat16"}, "x", "c")
    assert bf16.dtype == "bf16"
    spec = generic.spec_from_transformers(small, "x", "c")
    assert spec.dtype == "fp16" and "published dtype fp16 (the config names none)" in \
        generic.inferred(spec)


def test_cohere2_layer_kinds_come_from_the_config(hf):
    spec = generic.spec_from_transformers({"model_type": "cohere2"}, "c2", "config.json")
    assert spec.layer_types.count("sliding") == 30 and spec.layer_types.count("full") == 10
    assert spec.sliding_window == 4096
    assert "30 sliding (window 4096), 10 full attention layers" in generic.describe(spec)


def test_fused_experts_and_moe_fields(hf):
    cfg = {"model_type": "olmoe", "num_hidden_layers": 3, "intermediate_size": 1024}
    spec = generic.spec_from_transformers(cfg, "olmoe", "config.json")
    assert spec.experts == 64 and spec.experts_per_token == 8 and spec.moe_layer_count() == 3
    experts = [t for t in spec.tensors if t.role == "expert" and t.layer == 0]
    # transformers' fused (E, 2I, H) and (E, H, I) tensors, as E stacked (out, in) matrices
    assert {(t.name.rsplit(".", 1)[1], t.shape, t.split) for t in experts} == {
        ("gate_up_proj", (64 * 2048, 2048), "column"), ("down_proj", (64 * 2048, 1024), "row")}
    router = [t.role for t in spec.tensors if t.name == "model.layers.0.mlp.gate.weight"]
    assert router == ["router"]
    assert any("fused 3-D expert" in x for x in generic.inferred(spec))


@pytest.mark.parametrize("cfg", [
    {"model_type": "ernie4_5_moe", "num_hidden_layers": 5, "moe_num_experts": 8, "moe_k": 2},
    {"model_type": "olmo2", "num_hidden_layers": 3},
], ids=lambda c: c["model_type"])
def test_memory_fast_path_equals_the_whole_inventory(hf, cfg):
    """planner/memory.py counts one block per layer class and multiplies; generic checks that the
    blocks of a class are alike (ERNIE 4.5's first block is dense, the rest MoE, read from the
    blocks), so the folded sum equals the sum over every tensor."""
    from planner.engines import engine as get_engine
    from planner.memory import _shard_shape, tensor_bytes
    from planner.precision import weight_format

    spec = generic.spec_from_transformers(cfg, "x", "c")
    eng, fmt = get_engine("vllm"), weight_format("int8")
    for tp in (1, 2):
        whole = sum(tensor_bytes(t, _shard_shape(t, spec, tp, eng), fmt, 2, False)
                    for t in spec.tensors)
        assert estimate(spec, fmt, "fp16", tp, 1, Workload(1, 16, 0), eng).ranks[0].weights == whole


# The oracle for the inferred roles and splits: on architectures the planner does know, the
# generic inventory must give the hand-written one's bytes exactly, at every TP and format.
KNOWN = [
    {"model_type": "llama", "num_hidden_layers": 4},
    {"model_type": "qwen2", "num_hidden_layers": 4},           # q/k/v biases
    {"model_type": "gpt2", "n_layer": 3},                      # Conv1D, tied, learned positions
    {"model_type": "phi3", "num_hidden_layers": 3},            # fused qkv_proj / gate_up_proj
    {"model_type": "mixtral", "num_hidden_layers": 3},         # fused 3-D experts
    {"model_type": "qwen3_moe", "num_hidden_layers": 6, "decoder_sparse_step": 2,
     "mlp_only_layers": [5]},                                  # dense and MoE blocks
    {"model_type": "llama4_text", "num_hidden_layers": 8, "interleave_moe_layer_step": 2,
     "no_rope_layers": [1, 1, 1, 0, 1, 1, 1, 0]},              # chunked layers, interleaved MoE
    {"model_type": "gpt_oss", "num_hidden_layers": 4},         # sinks, expert biases
    {"model_type": "deepseek_v3", "num_hidden_layers": 5, "first_k_dense_replace": 2,
     "n_routed_experts": 16, "n_group": 4, "topk_group": 2},   # MLA, fp32 score-correction bias
]


@pytest.mark.parametrize("cfg", KNOWN, ids=lambda c: c["model_type"])
def test_generic_matches_the_hand_written_inventory(hf, cfg):
    from planner.sources import spec_from_config

    full = hf.AutoConfig.for_model(cfg["model_type"],
                                   **{k: v for k, v in cfg.items() if k != "model_type"}).to_dict()
    ours = spec_from_config(full, "x", "config.json")
    gen = generic.spec_from_transformers(full, "x", "config.json")
    assert param_count(gen) == param_count(ours)
    assert gen.kv_heads == ours.kv_heads and gen.head_dim == ours.head_dim
    assert [gen.window_of(i) for i in range(gen.layers)] == [
        ours.window_of(i) for i in range(ours.layers)]
    assert [gen.is_moe_layer(i) for i in range(gen.layers)] == [
        ours.is_moe_layer(i) for i in range(ours.layers)]
    for tp in (1, 2, 4):
        if ours.heads % tp or (ours.ffn % tp) or ours.kv_heads % min(tp, ours.kv_heads):
            continue
        for weights in ("fp16", "int4-g128"):
            assert _bytes(gen, weights, tp) == _bytes(ours, weights, tp), (tp, weights)


def _bytes(spec: ModelSpec, weights: str, tp: int) -> tuple[int, int] | str:
    """(weights, KV cache) bytes of rank 0, or 'infeasible' (a group that TP splits apart)."""
    try:
        r = estimate(spec, weights, "fp16", tp, 1, Workload(1, 512, 0), "vllm").ranks[0]
    except InfeasibleError:
        return "infeasible"
    return r.weights, r.kv_cache


def test_generic_plan_round_trips(hf, tmp_path):
    from planner.plan import load_plan, plan_document, write_plan
    from planner.sources import ModelSource

    cfg = UNKNOWN[-1]
    spec = generic.spec_from_transformers(cfg, "tiny-olmo2", str(tmp_path / "config.json"))
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    est = estimate(spec, "int4-g128", "fp16", 2, 1, Workload(2, 512, 64), "vllm")
    gpus = {"set": "2x3090", "gpus": [{"index": i, "name": "RTX 3090",
                                       "memory_bytes": 25769803776} for i in range(2)]}
    path = str(tmp_path / "plan.yaml")
    write_plan(path, plan_document(est, ModelSource(spec, "config", "config.json"), gpus))
    plan = load_plan(path)
    assert plan.spec == spec and inventory(plan.spec) == spec.tensors
    assert generic.inferred(plan.spec) == generic.inferred(spec)


def test_bad_tensor_lists_in_a_spec_are_refused():
    base = {"name": "x", "family": "generic", "layers": 1, "hidden": 8, "heads": 2, "vocab": 16}
    for bad, fragment in (("nope", "must be a list"),
                          ([["w", [8, 8], "linear", "diagonal", 0]], "split must be one of"),
                          ([["w", [8, -1], "linear", "row", 0]], "positive integers"),
                          ([["w", [8, 8], "linear"]], "must be [name, shape"),
                          ([["w", [8], "norm", "replicated", 0, "fp64"]], "dtype")):
        with pytest.raises(InputError, match="field 'tensors'") as e:
            ModelSpec.from_dict({**base, "tensors": bad})
        assert fragment in str(e.value)


# -- refusals --------------------------------------------------------------------------------------

def test_without_transformers_the_refusal_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(InputError) as e:
        generic.spec_from_transformers({"model_type": "olmo2"}, "x", "cfg.json")
    msg = str(e.value)
    assert "\n" not in msg and "'olmo2'" in msg and generic.INSTALL in msg
    assert msg.startswith("cfg.json: ")


def test_unknown_to_both_is_one_line(hf):
    with pytest.raises(InputError) as e:
        generic.spec_from_transformers({"model_type": "no_such_arch_xyz"}, "x", "cfg.json")
    assert str(e.value) == (f"cfg.json: model_type 'no_such_arch_xyz' is known to neither the "
                            f"planner nor transformers {hf.__version__}")


@pytest.mark.parametrize("cfg, fragment", [
    ({"model_type": "t5"}, "encoder-decoder"),
    ({"model_type": "qwen3_next"}, "layer type 'linear_attention'"),
    ({"model_type": "rwkv"}, "no key/value projection"),
    ({"model_type": "mamba"}, "layer type"),
])
def test_architectures_it_cannot_size_are_refused(hf, cfg, fragment):
    with pytest.raises(InputError) as e:
        generic.spec_from_transformers(cfg, "x", "cfg.json")
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cfg, fragment", [
    ({"hidden_size": 10 ** 7}, "'hidden_size' = 10000000 is implausible"),
    ({"num_hidden_layers": 10 ** 5}, "'num_hidden_layers' = 100000 is implausible"),
    ({"vocab_size": 10 ** 12}, "'vocab_size'"),
    ({"hidden_size": "big"}, "'hidden_size' must be an integer"),
    ({"hidden_size": 1 << 20, "intermediate_size": 1 << 22, "num_hidden_layers": 10_000,
      "num_attention_heads": 1 << 10, "num_key_value_heads": 1 << 10}, "implausibly many"),
    ({"text_config": {"num_hidden_layers": 10 ** 9}}, "'num_hidden_layers'"),
])
def test_hostile_sizes_are_refused_before_building(hf, cfg, fragment):
    t = time.monotonic()
    with pytest.raises(InputError) as e:
        generic.spec_from_transformers({"model_type": "olmo2", **cfg}, "x", "cfg.json")
    assert fragment in str(e.value)
    assert time.monotonic() - t < 10


def test_importing_generic_stays_light():
    code = ("import sys, planner.generic, planner.spec\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- the command line (planner/sources.py sends an unknown model_type here) -----------------------

@pytest.fixture
def olmo2_json(tmp_path) -> str:
    path = tmp_path / "tiny-olmo2" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**UNKNOWN[-1], "architectures": ["Olmo2ForCausalLM"],
                                "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}))
    return str(path)


@pytest.mark.slow  # CI time (about 20 s); python -m pytest -m slow
def test_cli_estimate_plans_a_generic_model(hf, olmo2_json):
    spec = generic.spec_from_transformers(UNKNOWN[-1], "x", "x")
    r = run_cli("estimate", "--model", olmo2_json, "--json", "--tp", "2")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["family"] == "generic" and doc["model"]["params"] == param_count(spec)
    assert doc["precision"]["weights"] == "fp16" and doc["layout"]["tp"] == 2
    r = run_cli("estimate", "--model", olmo2_json)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"tiny-olmo2 ({fmt_count(param_count(spec))} params)")


def test_cli_says_the_model_is_generic_and_what_was_inferred(hf, olmo2_json):
    import planner.cli

    if "generic" not in inspect.getsource(planner.cli):
        pytest.skip("planner/cli.py does not print generic.describe(spec) yet")
    r = run_cli("estimate", "--model", olmo2_json)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("generic: ")]
    assert len(lines) == 1 and "inferred: " in lines[0] and "TP splits" in lines[0]


def _one_line_error(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("planner: error: ") and r.stdout == ""
    return lines[0]


def test_cli_unknown_to_both_is_one_line(hf, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "no_such_arch_xyz", "hidden_size": 64}))
    line = _one_line_error(run_cli("estimate", "--model", str(path)))
    assert "'no_such_arch_xyz' is known to neither the planner nor transformers" in line


def test_cli_without_transformers_names_what_to_install(olmo2_json):
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from planner.cli import main\n"
            f"sys.exit(main(['estimate', '--model', {olmo2_json!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    line = _one_line_error(r)
    assert generic.INSTALL in line and "'olmo2'" in line
