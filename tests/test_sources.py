"""Hugging Face config.json -> ModelSpec (planner.sources), and the catalog's name handling.

Every expected parameter count here is a published figure (cited) or checked by hand arithmetic in a
comment; none is computed by the planner. The configs use the real Hugging Face field names.
"""

from __future__ import annotations

import json
import os

import pytest

from planner import catalog
from planner.errors import InputError
from planner.sources import MAX_CONFIG_BYTES, resolve, spec_from_config
from planner.spec import param_count

# -- realistic config.json files (real HF field names and values) ----------------------------------

LLAMA_2_7B = {  # meta-llama/Llama-2-7b-hf config.json
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-05, "hidden_act": "silu",
    "torch_dtype": "float16", "rope_scaling": None, "pretraining_tp": 1, "bos_token_id": 1,
    "eos_token_id": 2, "initializer_range": 0.02, "use_cache": True,
}

MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1 config.json
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
    "sliding_window": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
}

MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1 config.json
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
    "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e6, "rms_norm_eps": 1e-05,
    "sliding_window": None, "tie_word_embeddings": False, "router_aux_loss_coef": 0.02,
    "torch_dtype": "bfloat16",
}

QWEN25_7B = {  # Qwen/Qwen2.5-7B-Instruct config.json
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
    "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

PHI3_MINI = {  # microsoft/Phi-3-mini-4k-instruct config.json
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072,
    "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096, "sliding_window": 2047, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}

OPT_125M = {  # facebook/opt-125m config.json
    "architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 768,
    "ffn_dim": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 50272,
    "max_position_embeddings": 2048, "word_embed_proj_dim": 768, "do_layer_norm_before": True,
    "activation_function": "relu", "enable_bias": True, "torch_dtype": "float16",
    "_name_or_path": "facebook/opt-125m",
}

GPT2 = {  # openai-community/gpt2 config.json
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768, "n_layer": 12,
    "n_head": 12, "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
}

BLOOM = {  # bigscience/bloom config.json
    "architectures": ["BloomForCausalLM"], "model_type": "bloom", "hidden_size": 14336,
    "n_layer": 70, "n_head": 112, "vocab_size": 250880, "layer_norm_epsilon": 1e-05,
    "apply_residual_connection_post_layernorm": False, "pretraining_tp": 4,
}

FALCON_40B = {  # tiiuae/falcon-40b config.json (model_type falcon, new decoder architecture)
    "architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 8192,
    "num_hidden_layers": 60, "num_attention_heads": 128, "num_kv_heads": 8,
    "new_decoder_architecture": True, "parallel_attn": True, "bias": False, "alibi": False,
    "vocab_size": 65024, "layer_norm_epsilon": 1e-05, "torch_dtype": "bfloat16",
}

DEEPSEEK_V3 = {  # deepseek-ai/DeepSeek-V3 config.json
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "first_k_dense_replace": 3, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
    "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "moe_layer_freq": 1,
    "num_nextn_predict_layers": 1, "rope_theta": 10000, "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}

# (id, config, catalog alias, published parameter count or None)
MODELS = [
    # Llama-2-7b: embed + lm_head 2 x 32000 x 4096 = 262,144,000; per layer attention
    # 4 x 4096^2 = 67,108,864, MLP 3 x 4096 x 11008 = 135,266,304, two norms 8,192 ->
    # 202,383,360 x 32 = 6,476,267,520; final norm 4,096. Sum 6,738,415,616 (llama.cpp: 6.74 B).
    ("llama", LLAMA_2_7B, "llama-2-7b", 6_738_415_616),
    # Mistral-7B index total_size 14,483,464,192 bytes bf16 / 2.
    ("mistral", MISTRAL_7B, "mistral-7b", 7_241_732_096),
    # Mixtral-8x7B index total_size 93,405,585,408 bytes bf16 / 2.
    ("mixtral", MIXTRAL_8X7B, "mixtral-8x7b", 46_702_792_704),
    # Qwen2.5-7B-Instruct model card: 7.61 B; by hand: embed + lm_head 2 x 152064 x 3584 =
    # 1,089,994,752; per layer q,o 2 x 3584^2 = 25,690,112, k,v 2 x 512 x 3584 = 3,670,016,
    # q/k/v biases 3584 + 2 x 512 = 4,608, MLP 3 x 3584 x 18944 = 203,685,888, norms 7,168 ->
    # 233,057,792 x 28 = 6,525,618,176; final norm 3,584. Sum 7,615,616,512.
    ("qwen2", QWEN25_7B, "qwen2.5-7b", 7_615_616_512),
    # Phi-3-mini-4k-instruct index total_size 7,642,159,104 bytes bf16 / 2.
    ("phi3", PHI3_MINI, "phi-3-mini", 3_821_079_552),
    # OPT-125m by hand: token embed 50272 x 768 = 38,608,896; positions (2048 + 2) x 768 =
    # 1,574,400; per layer q,k,v,o 4 x (768^2 + 768) = 2,362,368, fc1 768 x 3072 + 3072 =
    # 2,362,368, fc2 3072 x 768 + 768 = 2,360,064, two LayerNorms 4 x 768 = 3,072 -> 7,087,872
    # x 12 = 85,054,464; final LayerNorm 1,536; LM head tied. Sum 125,239,296 (HF's figure).
    ("opt", OPT_125M, "opt-125m", 125_239_296),
    # GPT-2 by hand: token embed 50257 x 768 = 38,597,376; positions 1024 x 768 = 786,432;
    # per layer as OPT's above 7,087,872 x 12 = 85,054,464; final LayerNorm 1,536; LM head tied.
    # Sum 124,439,808 (the well-known "124M" figure with tied embeddings).
    ("gpt2", GPT2, "gpt2", 124_439_808),
    # bigscience/bloom model card: 176,247,271,424 parameters.
    ("bloom", BLOOM, "bloom", 176_247_271_424),
    # No exact published count used for falcon-40b (the catalog says so); catalog check only.
    ("falcon", FALCON_40B, "falcon-40b", None),
    # DeepSeek-V3: 671 B total (README; the MTP module excluded) - checked rounded below.
    ("deepseek_v3", DEEPSEEK_V3, "deepseek-v3", None),
]


def write_config(tmp_path, cfg, name="config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("model_type,cfg,alias,published", MODELS, ids=[m[0] for m in MODELS])
def test_config_file_param_count(tmp_path, model_type, cfg, alias, published):
    src = resolve(write_config(tmp_path, cfg))
    assert src.kind == "config"
    assert src.spec.family == model_type
    n = param_count(src.spec)
    if published is not None:
        assert n == published
    assert n == param_count(catalog.lookup(alias).spec)


@pytest.mark.parametrize("model_type,cfg,alias,published", MODELS, ids=[m[0] for m in MODELS])
def test_config_folder_same_as_file(tmp_path, model_type, cfg, alias, published):
    folder = tmp_path / "some-model"
    folder.mkdir()
    write_config(folder, cfg)
    src = resolve(str(folder))
    assert src.kind == "config"
    assert src.path == str(folder)
    assert src.spec.name == "some-model"
    assert param_count(src.spec) == param_count(catalog.lookup(alias).spec)


def test_deepseek_v3_is_671b():
    # DeepSeek-V3 README: 671B total parameters (the 14B multi-token-prediction module excluded).
    spec = spec_from_config(dict(DEEPSEEK_V3), "deepseek-v3", "config.json")
    assert round(param_count(spec) / 1e9) == 671


def test_mistral_sliding_window_and_gqa():
    spec = spec_from_config(dict(MISTRAL_7B), "m", "config.json")
    assert spec.sliding_window == 4096
    assert (spec.heads, spec.kv_heads, spec.head_dim) == (32, 8, 128)  # 4096 / 32 = 128


def test_qwen2_sliding_window_ignored_when_disabled():
    spec = spec_from_config(dict(QWEN25_7B), "q", "config.json")
    assert spec.sliding_window == 0  # use_sliding_window false
    assert spec.qkv_bias


def test_gpt2_ffn_defaults_to_4h():
    spec = spec_from_config(dict(GPT2), "g", "config.json")
    assert spec.ffn == 3072  # n_inner null -> 4 x 768
    assert spec.tied_embeddings


def test_falcon_40b_gqa():
    spec = spec_from_config(dict(FALCON_40B), "f", "config.json")
    assert (spec.heads, spec.kv_heads, spec.head_dim) == (128, 8, 64)  # 8192 / 128 = 64


def test_name_from_name_or_path(tmp_path):
    assert resolve(write_config(tmp_path, OPT_125M)).spec.name == "facebook/opt-125m"


# -- bad config.json input -------------------------------------------------------------------------

def assert_input_error(path: str, *fragments: str) -> str:
    with pytest.raises(InputError) as info:
        resolve(path)
    msg = str(info.value)
    assert path in msg, msg
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def write_bytes(tmp_path, data: bytes, name="config.json") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_malformed_json(tmp_path):
    assert_input_error(write_bytes(tmp_path, b'{"model_type": "llama",, }'), "malformed JSON")


def test_truncated_json(tmp_path):
    text = json.dumps(LLAMA_2_7B, indent=2).encode()
    assert_input_error(write_bytes(tmp_path, text[: len(text) // 2]), "malformed JSON")


def test_empty_file(tmp_path):
    assert_input_error(write_bytes(tmp_path, b""))


def test_json_array(tmp_path):
    assert_input_error(write_bytes(tmp_path, json.dumps([LLAMA_2_7B]).encode()), "object")


def test_json_scalar(tmp_path):
    assert_input_error(write_bytes(tmp_path, b"42"), "object")


def test_not_utf8(tmp_path):
    assert_input_error(write_bytes(tmp_path, b'{"model_type": "\xff\xfe\xfa"}'), "UTF-8")


def test_binary_garbage(tmp_path):
    assert_input_error(write_bytes(tmp_path, bytes(range(256)) * 4))


def test_missing_model_type(tmp_path):
    cfg = {k: v for k, v in LLAMA_2_7B.items() if k != "model_type"}
    assert_input_error(write_config(tmp_path, cfg), "model_type")


def test_model_type_not_a_string(tmp_path):
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, "model_type": 7}), "model_type")


def test_unsupported_model_type(tmp_path):
    msg = assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, "model_type": "mamba"}),
                             "'mamba'", "not supported")
    for supported in ("llama", "mistral", "qwen2", "gpt2", "deepseek_v3"):
        assert supported in msg


@pytest.mark.parametrize("cfg,field", [
    (LLAMA_2_7B, "num_hidden_layers"),
    (LLAMA_2_7B, "hidden_size"),
    (LLAMA_2_7B, "vocab_size"),
    (LLAMA_2_7B, "intermediate_size"),
    (GPT2, "n_embd"),
    (OPT_125M, "ffn_dim"),
    (MIXTRAL_8X7B, "num_local_experts"),
    (DEEPSEEK_V3, "kv_lora_rank"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_missing_required_field(tmp_path, cfg, field):
    bad = {k: v for k, v in cfg.items() if k != field}
    assert_input_error(write_config(tmp_path, bad), field)


def test_required_field_null(tmp_path):
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, "num_hidden_layers": None}),
                       "num_hidden_layers")


@pytest.mark.parametrize("field,value", [
    ("num_hidden_layers", "32"),
    ("hidden_size", True),
    ("num_hidden_layers", 32.5),
    ("num_attention_heads", [32]),
    ("vocab_size", {"n": 32000}),
    ("tie_word_embeddings", "no"),
], ids=["layers-str", "hidden-bool", "layers-float", "heads-list", "vocab-dict", "tie-str"])
def test_wrong_types(tmp_path, field, value):
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, field: value}))


@pytest.mark.parametrize("field,value", [
    ("rope_theta", "fast"),
    ("rms_norm_eps", [1e-5]),
    ("sliding_window", "4k"),
    ("max_position_embeddings", "4096"),
    ("use_sliding_window", "yes"),
    ("attention_bias", "false"),
], ids=["rope-str", "eps-list", "window-str", "maxpos-str", "usesw-str", "attnbias-str"])
def test_wrong_types_optional_fields(tmp_path, field, value):
    # Optional fields with junk values must be an InputError too, not a ValueError/TypeError.
    base = QWEN25_7B if field == "use_sliding_window" else MISTRAL_7B
    assert_input_error(write_config(tmp_path, {**base, field: value}))


def test_null_optional_fields_take_defaults(tmp_path):
    # HF writes null for unset options; a null rope_theta or an odd torch_dtype is not an error.
    cfg = {**MISTRAL_7B, "rope_theta": None, "rms_norm_eps": None, "torch_dtype": ["x"],
           "tie_word_embeddings": None}
    spec = resolve(write_config(tmp_path, cfg)).spec
    assert spec.rope_theta == 10000.0 and spec.dtype == "fp16" and not spec.tied_embeddings
    assert param_count(spec) == 7_241_732_096  # as Mistral-7B above


@pytest.mark.parametrize("cfg,field,value", [
    (GPT2, "n_embd", "768"),
    (GPT2, "n_embd", [768]),
    (BLOOM, "hidden_size", {"h": 1}),
    (OPT_125M, "max_position_embeddings", "2048"),
    (FALCON_40B, "hidden_size", "8192"),
], ids=["gpt2-embd-str", "gpt2-embd-list", "bloom-hidden-dict", "opt-maxpos-str",
        "falcon-hidden-str"])
def test_wrong_types_other_families(tmp_path, cfg, field, value):
    assert_input_error(write_config(tmp_path, {**cfg, field: value}))


@pytest.mark.parametrize("field,value", [
    ("num_hidden_layers", 0),
    ("num_hidden_layers", -4),
    ("num_attention_heads", 0),
    ("num_attention_heads", -32),
    ("num_key_value_heads", 0),
    ("hidden_size", 0),
    ("vocab_size", -1),
])
def test_zero_or_negative(tmp_path, field, value):
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, field: value}))


def test_heads_not_multiple_of_kv_heads(tmp_path):
    # 32 query heads cannot be grouped over 5 KV heads (32 % 5 = 2).
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, "num_key_value_heads": 5}),
                       "kv_heads")


def test_hidden_not_multiple_of_heads(tmp_path):
    # 4096 % 30 = 16
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, "num_attention_heads": 30,
                                               "num_key_value_heads": 30}), "heads")


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 10**12),
    ("num_hidden_layers", 10**9),
    ("vocab_size", 10**15),
    ("intermediate_size", 10**12),
    ("hidden_size", 10**100),
])
def test_absurdly_large(tmp_path, field, value):
    assert_input_error(write_config(tmp_path, {**LLAMA_2_7B, field: value}), "implausibly large")


def test_integer_literal_too_long_for_python(tmp_path):
    # Python refuses int literals over 4300 digits (ValueError, not JSONDecodeError).
    data = b'{"model_type": "llama", "hidden_size": 1' + b"0" * 5000 + b"}"
    assert_input_error(write_bytes(tmp_path, data))


def test_deeply_nested_json(tmp_path):
    # json.loads raises RecursionError on very deep nesting.
    data = b'{"model_type": "llama", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert_input_error(write_bytes(tmp_path, data))


def test_moe_expert_explosion_refused_quickly(tmp_path):
    # 10000 MoE layers x 65536 experts = 655,360,000 expert FFNs (~2e9 tensors to list): a
    # 300-byte config must be refused, not hang. DeepSeek-V3 itself has 58 x 256 = 14,848.
    cfg = {**MIXTRAL_8X7B, "num_local_experts": 65536, "num_hidden_layers": 10000,
           "hidden_size": 64, "intermediate_size": 16, "num_attention_heads": 1,
           "num_key_value_heads": 1, "vocab_size": 10}
    assert_input_error(write_config(tmp_path, cfg), "experts")


def test_moe_experts_per_token_exceeds_experts(tmp_path):
    assert_input_error(write_config(tmp_path, {**MIXTRAL_8X7B, "num_experts_per_tok": 9}),
                       "experts_per_token")


def test_opt_350m_projection_refused(tmp_path):
    # opt-350m has word_embed_proj_dim 512 != hidden_size 1024 (project_in/out), unsupported.
    cfg = {**OPT_125M, "hidden_size": 1024, "word_embed_proj_dim": 512, "num_attention_heads": 16}
    assert_input_error(write_config(tmp_path, cfg), "word_embed_proj_dim")


def test_huge_file_refused_without_reading(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    with open(path, "wb") as fh:  # sparse: > 16 MiB on paper, no real data
        fh.truncate(MAX_CONFIG_BYTES + 1)
    assert MAX_CONFIG_BYTES == 16 << 20
    import builtins

    real_open = builtins.open

    def guarded_open(file, mode="r", *a, **kw):
        assert os.fspath(file) != str(path), "the oversized config was opened"
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert_input_error(str(path), "too large")


def test_folder_without_config(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    assert_input_error(str(tmp_path), "no config.json")


def test_empty_folder(tmp_path):
    assert_input_error(str(tmp_path))


def test_nonexistent_path():
    with pytest.raises(InputError) as info:
        resolve("./nope/config.json")
    assert "./nope/config.json" in str(info.value)
    assert "no such file" in str(info.value)


def test_nonexistent_absolute_path(tmp_path):
    missing = str(tmp_path / "missing" / "config.json")
    with pytest.raises(InputError) as info:
        resolve(missing)
    assert missing in str(info.value)


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_model(value):
    with pytest.raises(InputError):
        resolve(value)


def test_config_json_is_a_folder_without_config(tmp_path):
    # A folder that happens to be called config.json holds nothing usable.
    d = tmp_path / "config.json"
    d.mkdir()
    assert_input_error(str(d))


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = write_config(tmp_path, LLAMA_2_7B)
    os.chmod(path, 0)
    assert_input_error(path, "cannot read")


def test_unlistable_folder(tmp_path, monkeypatch):
    # Simulated: as root a chmod 0 folder is still listable.
    def denied(p):
        raise PermissionError(13, "Permission denied", p)

    monkeypatch.setattr(os, "listdir", denied)
    assert_input_error(str(tmp_path), "cannot list")


# -- catalog ---------------------------------------------------------------------------------------

def test_unknown_name_suggests():
    with pytest.raises(InputError) as info:
        catalog.lookup("llama-2-7")
    msg = str(info.value)
    assert "did you mean" in msg
    assert "'llama-2-7b'" in msg


def test_unknown_name_through_resolve():
    with pytest.raises(InputError) as info:
        resolve("mistral-7")
    assert "did you mean" in str(info.value)


@pytest.mark.parametrize("name", ["LLAMA-2-7B", "Llama-2-7b", "meta-llama/llama-2-7b-hf",
                                  "llama-2-7b-hf", "  llama-2-7b  "])
def test_aliases_case_insensitive(name):
    assert catalog.lookup(name).spec.name == "meta-llama/Llama-2-7b-hf"


def test_every_entry_has_a_source():
    entries = catalog.entries()
    assert len(entries) >= 10
    for e in entries:
        assert isinstance(e.source, str) and e.source.strip(), e.spec.name
        assert e.spec.source.strip(), e.spec.name


def test_every_alias_resolves_to_its_entry():
    for e in catalog.entries():
        for alias in e.aliases:
            assert catalog.lookup(alias) is e
