"""config.json of today's architectures -> spec features, checked against transformers' own reading.

transformers' config classes derive what a config.json leaves implicit (Gemma 2's alternation,
Gemma 3's 5 local : 1 global, gpt-oss's alternation, Llama 4's chunked and NoPE layers and its MoE
layers, Qwen3-MoE's sparse step): the planner's parser must reach the same per-layer answer, so the
oracle here is ``AutoConfig.for_model(**cfg)``, not the parser. Parameter counts of the real
full-size configs are checked against transformers' built model in tests/test_oracle_transformers.py.
Bad input is checked through the command line: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.errors import InputError
from planner.sources import spec_from_config

transformers = pytest.importorskip("transformers")

KIND = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked"}

# Small configs of each model type with the real models' structural fields (layer counts chosen so
# every pattern repeats at least twice).
CONFIGS = {
    "gemma2": dict(model_type="gemma2", hidden_size=256, intermediate_size=512,
                   num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=64, vocab_size=1000, sliding_window=16),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=256, intermediate_size=512,
                        num_hidden_layers=13, num_attention_heads=4, num_key_value_heads=1,
                        head_dim=64, vocab_size=1000, sliding_window=16),
    "gpt_oss": dict(model_type="gpt_oss", hidden_size=256, intermediate_size=256,
                    num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                    num_local_experts=4, num_experts_per_tok=2, vocab_size=1000),
    "llama4_text": dict(model_type="llama4_text", hidden_size=256, intermediate_size=128,
                        intermediate_size_mlp=512, num_hidden_layers=8, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64, num_local_experts=4,
                        interleave_moe_layer_step=2, vocab_size=1000),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=256, intermediate_size=512,
                      num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, vocab_size=1000, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=128, decoder_sparse_step=2, mlp_only_layers=[3]),
    "qwen3_swa": dict(model_type="qwen3", hidden_size=256, intermediate_size=512,
                      num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, vocab_size=1000, use_sliding_window=True, sliding_window=32,
                      max_window_layers=4),
}


def _hf(cfg: dict):
    return transformers.AutoConfig.for_model(**cfg)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_layer_kinds_match_transformers(key):
    cfg = CONFIGS[key]
    spec = spec_from_config(dict(cfg), key, key)
    hf = _hf(cfg)
    # a config class without layer_types (Qwen3-MoE) has full attention everywhere
    want = [KIND[t] for t in getattr(hf, "layer_types", None) or
            ["full_attention"] * hf.num_hidden_layers]
    got = [spec.layer_kind(i) for i in range(spec.layers)]
    assert got == want
    for i, kind in enumerate(want):
        if kind == "sliding":
            assert spec.window_of(i) == hf.sliding_window
        elif kind == "chunked":
            assert spec.window_of(i) == hf.attention_chunk_size
        else:
            assert spec.window_of(i) == 0


def test_llama4_nope_and_moe_layers_match_transformers():
    cfg = CONFIGS["llama4_text"]
    spec = spec_from_config(dict(cfg), "l4", "l4")
    hf = _hf(cfg)
    assert [int(spec.uses_rope(i)) for i in range(spec.layers)] == hf.no_rope_layers
    assert [i for i in range(spec.layers) if spec.is_moe_layer(i)] == hf.moe_layers
    assert spec.qk_norm == "l2" and spec.shared_experts == 1
    assert spec.ffn == cfg["intermediate_size_mlp"] and spec.expert_ffn == cfg["intermediate_size"]


def test_llama4_explicit_moe_layers():
    cfg = {**CONFIGS["llama4_text"], "moe_layers": [0, 5, 6]}
    spec = spec_from_config(dict(cfg), "l4", "l4")
    assert [i for i in range(spec.layers) if spec.is_moe_layer(i)] == [0, 5, 6]


def test_qwen3_moe_sparse_step_and_mlp_only_layers_match_transformers():
    cfg = CONFIGS["qwen3_moe"]
    spec = spec_from_config(dict(cfg), "q", "q")
    with __import__("torch").device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(_hf(cfg))
    moe = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert [i for i in range(spec.layers) if spec.is_moe_layer(i)] == moe == [1, 5]


def test_gemma_features():
    spec = spec_from_config(dict(CONFIGS["gemma2"]), "g2", "g2")
    assert (spec.sandwich_norms, spec.norm_offset, spec.embed_scale, spec.tied_embeddings) == (
        True, True, True, True)
    assert (spec.attn_softcap, spec.final_softcap) == (50.0, 30.0)  # Gemma2Config defaults
    g3 = spec_from_config(dict(CONFIGS["gemma3_text"]), "g3", "g3")
    assert g3.qk_norm == "rms" and g3.attn_softcap == 0 and g3.final_softcap == 0


def test_gpt_oss_features():
    spec = spec_from_config(dict(CONFIGS["gpt_oss"]), "o", "o")
    assert spec.attn_sinks and spec.router_linear_bias and spec.expert_bias
    assert spec.routing == "softmax_topk" and spec.qkv_bias and spec.o_bias
    assert spec.sliding_window == 128  # GptOssConfig default


def test_deepseek_v2_lite_has_no_query_lora():
    cfg = dict(model_type="deepseek_v2", hidden_size=256, intermediate_size=512,
               num_hidden_layers=3, num_attention_heads=4, kv_lora_rank=64, q_lora_rank=None,
               qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
               n_shared_experts=2, num_experts_per_tok=2, moe_intermediate_size=64,
               first_k_dense_replace=1, vocab_size=1000)
    spec = spec_from_config(cfg, "v2", "v2")
    assert spec.q_lora_rank == 0 and spec.mla and spec.routing == "softmax"
    assert not spec.router_bias and spec.dense_layers == 1
    names = {t.name for t in __import__("planner.spec", fromlist=["inventory"]).inventory(spec)}
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert not any("q_a_proj" in n for n in names)


def test_glm4_native_is_not_glm130b():
    # transformers' GLM-4 (glm-4-9b-chat-hf) uses model_type "glm" with num_hidden_layers;
    # GLM-130B's config uses num_layers. Both are read, each as itself.
    cfg = dict(model_type="glm", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1000)
    spec = spec_from_config(cfg, "glm4", "glm4")
    assert spec.qkv_bias and not spec.o_bias and not spec.sandwich_norms
    assert spec.norm == "rmsnorm" and spec.gated_ffn


def test_multimodal_text_config_defaults_and_required_fields():
    text = dict(model_type="gemma3_text", hidden_size=256, intermediate_size=512,
                num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=64)
    spec = spec_from_config({"model_type": "gemma3", "text_config": text}, "g3", "g3")
    assert spec.vocab == 262208  # Gemma3TextConfig's default, absent from the published text_config
    with pytest.raises(InputError, match="text_config lacks 'hidden_size'"):
        spec_from_config({"model_type": "gemma3",
                          "text_config": {k: v for k, v in text.items() if k != "hidden_size"}},
                         "g3", "g3")


# -- bad input through the command line -------------------------------------------------------------

def _estimate(tmp_path, cfg: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run([sys.executable, "-m", "planner", "estimate", "--model", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("change,fragment", [
    ({"layer_types": ["sliding_attention"] * 5}, "layer_types lists 5 layers but the model has 6"),
    ({"layer_types": ["sliding_attention"] * 5 + ["global"]}, "unknown layer kind 'global'"),
    ({"sliding_window": 0}, "sliding layers need a positive sliding_window"),
    ({"num_local_experts": 2, "num_experts_per_tok": 4}, "experts per token (4)"),
    ({"layer_types": "sliding"}, "'layer_types' must be a list"),
], ids=["layer-types-length", "unknown-kind", "window-0", "experts-per-token", "not-a-list"])
def test_bad_feature_fields_one_line_exit_2(tmp_path, change, fragment):
    out = _estimate(tmp_path, {**CONFIGS["gpt_oss"], **change})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("planner: error:"), out.stderr
    assert fragment in lines[0], lines[0]


def test_text_config_missing_fields_one_line_exit_2(tmp_path):
    out = _estimate(tmp_path, {"model_type": "mistral3", "text_config": {"model_type": "mistral",
                                                                          "hidden_size": 64}})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "text_config lacks" in lines[0], out.stderr
    assert "'num_hidden_layers'" in lines[0]


def test_router_bias_goes_with_sigmoid_routing():
    """The score-correction bias exists only with sigmoid scores: a spec that says softmax with it
    is refused, and a spec written before the routing field (router_bias alone) reads as sigmoid;
    DeepSeek-V3's config reads as sigmoid with the bias."""
    from planner.catalog import lookup
    from planner.spec import ModelSpec

    base = dict(name="x", family="deepseek_v3", layers=2, hidden=64, heads=4, vocab=100, ffn=128,
                experts=4, experts_per_token=2, router_bias=True)
    with pytest.raises(InputError, match="router_bias .* needs routing sigmoid"):
        ModelSpec.from_dict({**base, "routing": "softmax"})
    assert ModelSpec.from_dict(base).routing == "sigmoid"
    for name in ("deepseek-v3", "deepseek-r1", "glm-4.5"):
        spec = lookup(name).spec
        assert spec.router_bias and spec.routing == "sigmoid", name
