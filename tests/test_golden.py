"""Golden numbers: published parameter counts and hand-calculated KV caches.

The counts are from ../shared/reference/param_counts.yaml and models.yaml (sources cited there and
repeated here); they are test inputs, never inputs to the planner.
"""

import pytest

from planner.catalog import lookup
from planner.memory import Workload, estimate, total_weight_bytes
from planner.spec import param_count

# (model, exact published parameter count, source)
PARAMS = [
    ("gpt2", 124_439_808, "GPT-2 124M, 'Total parameters with tied embeddings' (public notes)"),
    ("bloom", 176_247_271_424, "bigscience/bloom model card"),
    ("llama-2-7b", 6_738_415_616, "llama.cpp prints 6.74 B; Llama-2-7b-hf total_size / 2"),
    ("mistral-7b", 7_241_732_096, "Mistral-7B index total_size 14,483,464,192 bytes bf16 / 2"),
    ("mixtral-8x7b", 46_702_792_704, "Mixtral-8x7B 93,405,585,408 bytes bf16 / 2"),
]

# (model, safetensors total_size in bytes at 2 bytes per parameter, source)
TOTAL_SIZE = [
    ("qwen2.5-72b", 145_412_407_296, "official Qwen2.5-72B index total_size"),
    ("phi-3-mini", 7_642_159_104, "official Phi-3-mini-4k-instruct total_size"),
    ("falcon-180b", 359_045_130_240, "falcon-180B-chat model.safetensors.index.json total_size"),
    ("mistral-7b", 14_483_464_192, "Mistral-7B index total_size"),
]


@pytest.mark.parametrize("name,count,source", PARAMS)
def test_published_param_counts(name, count, source):
    assert param_count(lookup(name).spec) == count, source


@pytest.mark.parametrize("name,size,source", TOTAL_SIZE)
def test_safetensors_total_size(name, size, source):
    assert total_weight_bytes(lookup(name).spec, "bf16") == size, source


def test_llama2_7b_total_size_includes_rotary_buffers():
    # 13,476,839,424 bytes = 2 x 6,738,415,616 + 32 layers x 64 fp32 inv_freq entries (a buffer).
    weights = total_weight_bytes(lookup("llama-2-7b").spec, "fp16")
    assert weights + 32 * 64 * 4 == 13_476_839_424


def test_bloom_embedding_params():
    spec = lookup("bloom").spec
    assert spec.vocab * spec.hidden == 3_596_615_680


def test_deepseek_v3_is_671b():
    # DeepSeek-V3 README: 671B total parameters (the 14B multi-token-prediction module excluded).
    assert round(param_count(lookup("deepseek-v3").spec) / 1e9) == 671


def test_smollm2_params():
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters; also the GGUF's exact tensor list
    # (tests/test_inspect.py).
    assert param_count(lookup("smollm2-135m").spec) == 134_515_008


def kv_per_token(name, kv="fp16", tp=1):
    return estimate(lookup(name).spec, "fp16", kv, tp, 1, Workload(1, 1, 0)).kv_bytes_per_token


def test_kv_cache_hand_calculation():
    # Llama-2-7b: 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes = 524,288 bytes per token.
    assert kv_per_token("llama-2-7b") == 2 * 32 * 32 * 128 * 2 == 524_288
    # Mistral-7B (GQA, 8 KV heads): 2 x 32 x 8 x 128 x 2 = 131,072.
    assert kv_per_token("mistral-7b") == 131_072
    # int8 KV with an fp16 scale per token per head: 2 x 32 x 8 x (128 + 2).
    assert kv_per_token("mistral-7b", "int8") == 2 * 32 * 8 * 130
    # int4: 64 bytes of payload + 2 bytes of scale per head vector.
    assert kv_per_token("mistral-7b", "int4") == 2 * 32 * 8 * 66
    # DeepSeek-V3 MLA: one latent of 512 + 64 per token per layer, replicated over TP.
    assert kv_per_token("deepseek-v3") == 61 * 576 * 2
    assert kv_per_token("deepseek-v3", tp=8) == 61 * 576 * 2


def test_kv_heads_replicate_when_tp_exceeds_them():
    # Llama-2-70b has 8 KV heads: at TP 16 every rank still holds one head (replicated).
    spec = lookup("llama-2-70b").spec
    per = estimate(spec, "fp16", "fp16", 16, 1, Workload(1, 1, 0)).kv_bytes_per_token
    assert per == 2 * 80 * 1 * 128 * 2
    per8 = estimate(spec, "fp16", "fp16", 8, 1, Workload(1, 1, 0)).kv_bytes_per_token
    assert per == per8


def test_kv_total_for_workload():
    spec = lookup("llama-2-7b").spec
    est = estimate(spec, "fp16", "fp16", 1, 1, Workload(4, 1000, 24))
    assert est.ranks[0].kv_cache == 4 * 1024 * 524_288


def test_sliding_window_caps_the_cache():
    spec = lookup("mistral-7b").spec
    long = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 8192, 0))
    assert long.ranks[0].kv_cache == 4096 * 131_072
    # transformers 5's DynamicSlidingWindowLayer keeps the last sliding_window - 1 tokens
    # (cache_utils.py: full_key_states[:, :, -self.sliding_window + 1:, :])
    hf = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 8192, 0), "transformers")
    assert hf.ranks[0].kv_cache == 4095 * 131_072
    # llama.cpp has no SWA cache for an all-sliding (llama-arch) model: the whole context
    cpp = estimate(spec, "q8_0", "fp16", 1, 1, Workload(1, 8192, 0), "llama.cpp")
    assert cpp.ranks[0].kv_cache == 8192 * 131_072


def test_interleaved_sliding_layers_hold_the_window():
    from dataclasses import replace
    base = lookup("llama-2-7b").spec  # 32 layers, 524,288 KV bytes per token
    kinds = tuple("full" if (i + 1) % 4 == 0 else "sliding" for i in range(32))
    spec = replace(base, layer_types=kinds, sliding_window=1024)
    per_layer = 524_288 // 32
    est = estimate(spec, "fp16", "fp16", 1, 1, Workload(2, 8192, 0))
    assert est.ranks[0].kv_cache == 2 * per_layer * (8 * 8192 + 24 * 1024)
    by = est.ranks[0].detail["kv_cache"]["by_kind"]
    assert by["full"]["layers"] == 8 and by["sliding"]["tokens_per_sequence"] == 1024
    # llama.cpp's iSWA cache: window + n_ubatch (512) tokens on the sliding layers
    cpp = estimate(spec, "q8_0", "fp16", 1, 1, Workload(2, 8192, 0), "llama.cpp")
    assert cpp.ranks[0].kv_cache == 2 * per_layer * (8 * 8192 + 24 * (1024 + 512))
    # a context inside the window: every layer holds the whole context
    short = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 600, 0))
    assert short.ranks[0].kv_cache == 600 * 524_288


def test_paged_engine_rounds_to_blocks():
    spec = lookup("mistral-7b").spec
    est = estimate(spec, "fp16", "fp16", 1, 1, Workload(3, 100, 1), "vllm")
    assert est.ranks[0].kv_cache == 3 * 112 * 131_072  # 101 tokens -> 7 blocks of 16


class TestGLM130B:
    """The seed 000: 'only 70GB of GPU memory approximately is required for INT4 model weights'."""

    spec = lookup("glm-130b").spec

    def test_int4_total_weights_about_70gb(self):
        total = total_weight_bytes(self.spec, "int4")
        # Linear weights 126.8 B params at 4 bits + fp16 scales, embeddings/norms/biases fp16.
        assert 65e9 < total < 72e9
        linear = 70 * (4 * 12288**2 + 3 * 12288 * 32768)
        rows = 70 * (3 * 12288 + 12288 + 2 * 32768 + 12288)
        others = param_count(self.spec) - linear
        assert total == linear // 2 + rows * 2 + others * 2

    @pytest.mark.parametrize("tp", [4, 8])
    def test_per_gpu_split(self, tp):
        est = estimate(self.spec, "int4", "fp16", tp, 1, Workload(1, 2048, 0))
        total = total_weight_bytes(self.spec, "int4")
        per_rank = est.ranks[0].weights
        assert all(r.weights == per_rank for r in est.ranks)
        # Replicated per rank: norms (2 per layer + final, weight and bias) and row-parallel biases
        # (o_proj, down_proj): 70 x (4 + 2) x 12288 + 2 x 12288 parameters at fp16; and the
        # per-output-channel fp16 scales of the row-parallel linears (o_proj, down_proj), since a
        # row split keeps every output row on every rank: 70 x 2 x 12288 scales.
        replicated = (70 * 6 * 12288 + 2 * 12288) * 2 + 70 * 2 * 12288 * 2
        assert per_rank * tp == total + (tp - 1) * replicated
        # 16.8 GB at TP 4 and 8.4 GB at TP 8: under a 24 GB RTX 3090 and an 11 GiB RTX 2080 Ti.
        assert per_rank == pytest.approx(total / tp, rel=0.002)
        assert per_rank < {4: 24 * 10**9, 8: 11 * 2**30}[tp]
