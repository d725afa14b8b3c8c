"""GGUF metadata + tensor names of today's architectures -> spec, against transformers' count.

For each architecture a small transformers model is built on the meta device; its parameter names
are mapped to llama.cpp's GGUF names by gguf-py's own ``TensorNameMap`` (stacked expert tensors,
which transformers 5 stores fused, by llama.cpp's ``*_exps`` convention), and the metadata is what
llama.cpp's converter writes for such a model (keys from ``gguf.constants.Keys``). The planner's
spec read from that metadata and those names must count exactly transformers' parameters.
"""

from __future__ import annotations

import pytest

from planner.sources import spec_from_gguf
from planner.spec import param_count

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from gguf.constants import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES  # noqa: E402
from gguf.tensor_mapping import get_tensor_name_map  # noqa: E402

BASE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=128, pad_token_id=0)

# (GGUF arch, transformers config, extra GGUF metadata beyond the common keys)
CASES = {
    "qwen3": (MODEL_ARCH.QWEN3, dict(model_type="qwen3", intermediate_size=96), {}),
    "qwen3moe": (MODEL_ARCH.QWEN3MOE, dict(model_type="qwen3_moe", intermediate_size=96,
                                            num_experts=4, num_experts_per_tok=2,
                                            moe_intermediate_size=32), {}),
    "gemma2": (MODEL_ARCH.GEMMA2, dict(model_type="gemma2", intermediate_size=96,
                                        sliding_window=8), {"attention.sliding_window": 8}),
    "gemma3": (MODEL_ARCH.GEMMA3, dict(model_type="gemma3_text", intermediate_size=96,
                                        sliding_window=8), {"attention.sliding_window": 8}),
    "gpt-oss": (MODEL_ARCH.GPT_OSS, dict(model_type="gpt_oss", intermediate_size=32,
                                          num_local_experts=4, num_experts_per_tok=2,
                                          sliding_window=8),
                {"attention.sliding_window": 8, "expert_gating_func": 3}),
    "llama4": (MODEL_ARCH.LLAMA4, dict(model_type="llama4_text", intermediate_size=32,
                                        intermediate_size_mlp=96, num_local_experts=4,
                                        interleave_moe_layer_step=2),
               {"interleave_moe_layer_step": 2}),
    "deepseek2": (MODEL_ARCH.DEEPSEEK2, dict(model_type="deepseek_v2", intermediate_size=96,
                                              kv_lora_rank=32, q_lora_rank=None,
                                              qk_nope_head_dim=16, qk_rope_head_dim=8,
                                              v_head_dim=16, n_routed_experts=4,
                                              n_shared_experts=2, num_experts_per_tok=2,
                                              moe_intermediate_size=32, first_k_dense_replace=1),
                  {"attention.kv_lora_rank": 32, "rope.dimension_count": 8,
                   "attention.key_length": 24, "attention.value_length": 16,
                   "expert_shared_count": 2, "leading_dense_block_count": 1,
                   "expert_gating_func": 1}),
    "glm4": (MODEL_ARCH.GLM4, dict(model_type="glm4", intermediate_size=96), {}),
    "glm4moe": (MODEL_ARCH.GLM4_MOE, dict(model_type="glm4_moe", intermediate_size=96,
                                           n_routed_experts=4, n_shared_experts=1,
                                           num_experts_per_tok=2, moe_intermediate_size=32,
                                           first_k_dense_replace=1, use_qk_norm=True,
                                           attention_bias=True),
                {"expert_shared_count": 1, "leading_dense_block_count": 1,
                 "expert_gating_func": 2}),
    "phimoe": (MODEL_ARCH.PHIMOE, dict(model_type="phimoe", intermediate_size=32,
                                        num_local_experts=4, num_experts_per_tok=2,
                                        attention_bias=True, lm_head_bias=True), {}),
}

_FUSED = {"gate_up_proj": ("ffn_gate_exps", "ffn_up_exps"), "down_proj": ("ffn_down_exps",)}


def _gguf_names(arch, model, layers: int) -> set[str]:
    """GGUF tensor names for the model's parameters (as llama.cpp's converter writes them)."""
    tmap = get_tensor_name_map(arch, layers)
    names: set[str] = set()
    for hf_name, _ in model.named_parameters():
        parts = hf_name.split(".")
        if "experts" in parts and parts[-1].removesuffix("_bias") in _FUSED:
            layer = parts[parts.index("layers") + 1]
            suffix = "bias" if parts[-1].endswith("_bias") else "weight"
            names |= {f"blk.{layer}.{t}.{suffix}" for t in _FUSED[parts[-1].removesuffix("_bias")]}
            continue
        base, _, suffix = hf_name.rpartition(".")
        if suffix not in ("weight", "bias"):
            base, suffix = hf_name, "weight"  # bare parameters (sinks)
        mapped = tmap.get_name(base)
        if mapped is None and base.endswith("e_score_correction"):
            mapped = tmap.get_name(base + "_bias")
        assert mapped is not None, f"gguf-py has no GGUF name for {hf_name}"
        names.add(f"{mapped}.{suffix}")
    if "gate.e_score_correction_bias" in " ".join(n for n, _ in model.named_buffers()):
        for n, _ in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                layer = n.split(".")[2]
                names.add(f"blk.{layer}.exp_probs_b.bias")
    allowed = {TENSOR_NAMES[t] for t in MODEL_TENSORS[arch]}
    for n in names:
        stem = n.rsplit(".", 1)[0]
        assert stem.split(".", 2)[-1] if stem.startswith("blk.") else stem
        generic = ("blk.{bid}." + stem.split(".", 2)[2]) if stem.startswith("blk.") else stem
        assert generic in allowed, f"{n} is not a {MODEL_ARCH_NAMES[arch]} tensor"
    return names


def _count(model) -> int:
    n = sum(p.numel() for p in model.parameters())
    # a router score-correction bias is a buffer in transformers but a tensor of the checkpoint
    n += sum(b.numel() for k, b in model.named_buffers() if k.endswith("e_score_correction_bias"))
    return n


@pytest.mark.parametrize("key", sorted(CASES))
def test_gguf_spec_counts_transformers_parameters(key):
    arch, cfg, extra = CASES[key]
    cfg = {**BASE, **cfg}
    hf = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf)
    name = MODEL_ARCH_NAMES[arch]
    meta = {"general.architecture": name}
    common = {"block_count": cfg["num_hidden_layers"], "embedding_length": cfg["hidden_size"],
              "feed_forward_length": cfg.get("intermediate_size_mlp", cfg["intermediate_size"]),
              "attention.head_count": cfg["num_attention_heads"],
              "attention.head_count_kv": cfg["num_key_value_heads"],
              "attention.key_length": cfg["head_dim"], "context_length": 4096,
              "rope.freq_base": 10000.0, "attention.layer_norm_rms_epsilon": 1e-6,
              "vocab_size": cfg["vocab_size"]}
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts")
    if experts:
        common.update({"expert_count": experts, "expert_used_count": hf.num_experts_per_tok,
                       "expert_feed_forward_length": cfg.get("moe_intermediate_size",
                                                             cfg["intermediate_size"])})
    for k, v in {**common, **extra}.items():
        meta[f"{name}.{k}"] = v
    names = _gguf_names(arch, model, cfg["num_hidden_layers"])
    spec = spec_from_gguf(meta, names, key, key)
    assert param_count(spec) == _count(model)
    hf_kinds = getattr(hf, "layer_types", None)
    if hf_kinds:
        kinds = {"full_attention": "full", "sliding_attention": "sliding",
                 "chunked_attention": "chunked"}
        assert [spec.layer_kind(i) for i in range(spec.layers)] == [kinds[t] for t in hf_kinds]
