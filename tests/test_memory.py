"""Properties of the memory model (hypothesis) and the pieces DESIGN §5 names."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.catalog import lookup
from planner.errors import InfeasibleError
from planner.memory import Workload, estimate, stage_layers, total_weight_bytes
from planner.precision import weight_format
from planner.spec import inventory

SMALL = ["smollm2-135m", "gpt2", "opt-125m", "llama-2-7b", "mistral-7b", "mixtral-8x7b",
         "qwen2.5-7b", "deepseek-v3", "falcon-40b", "bloom", "glm-130b", "phi-3-mini"]
ENGINES = ["runtime", "vllm", "transformers"]

models = st.sampled_from(SMALL)
engines = st.sampled_from(ENGINES)


def total(name, engine="runtime", batch=1, prompt=128, new=0, weights="fp16", tp=1, pp=1):
    est = estimate(lookup(name).spec, weights, "fp16", tp, pp, Workload(batch, prompt, new), engine)
    return max(r.total for r in est.ranks)


@settings(max_examples=60, deadline=None)
@given(models, engines, st.integers(1, 64), st.integers(1, 8192), st.integers(0, 512))
def test_monotone_in_batch(name, engine, b, prompt, new):
    assert total(name, engine, b, prompt, new) <= total(name, engine, b + 1, prompt, new)


@settings(max_examples=60, deadline=None)
@given(models, engines, st.integers(1, 16), st.integers(1, 8192), st.integers(0, 512))
def test_monotone_in_context(name, engine, b, prompt, new):
    assert total(name, engine, b, prompt, new) <= total(name, engine, b, prompt + 1, new)
    assert total(name, engine, b, prompt, new) <= total(name, engine, b, prompt, new + 1)


def replicated_bytes(spec, fmt, tp, base=2):
    """Bytes every rank keeps whole: replicated tensors, per-channel scales of row-split linears,
    and vocabulary padding (from the inventory's split labels, computed independently here)."""
    f = weight_format(fmt)
    extra = 0
    for t in inventory(spec):
        if t.split == "replicated":
            width = 4 if t.dtype == "fp32" else base
            extra += (f.bytes_for_shape(t.shape) if f.quantized and t.role in ("linear", "expert")
                      else t.numel * width)
        elif t.split == "row" and f.quantized and f.granularity == "channel":
            extra += t.shape[0] * f.scale_bytes
    return extra


@pytest.mark.parametrize("name,tp", [("llama-2-7b", 2), ("llama-2-7b", 4), ("mistral-7b", 8),
                                     ("qwen2.5-7b", 4), ("opt-13b", 8), ("glm-130b", 8),
                                     ("mixtral-8x7b", 8), ("deepseek-v3", 8), ("bloom", 8)])
@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
def test_tp_shards_add_up(name, tp, fmt):
    spec = lookup(name).spec
    whole = total_weight_bytes(spec, fmt)
    est = estimate(spec, fmt, "fp16", tp, 1, Workload(1, 16, 0))
    shards = sum(r.weights for r in est.ranks)
    # Whole model + (tp - 1) extra copies of what every rank keeps whole; KV heads replicated when
    # tp exceeds them; vocabulary padded to a multiple of tp.
    extra = (tp - 1) * replicated_bytes(spec, fmt, tp)
    if not spec.mla and tp > spec.kv_heads:
        kv = [t for t in inventory(spec) if t.split == "kv"]
        f = weight_format(fmt)
        per_head = sum((f.bytes_for_shape((spec.head_dim, t.shape[1])) if f.quantized and
                        t.role == "linear" else spec.head_dim * 2) for t in kv)
        extra += (tp - spec.kv_heads) * per_head
    pad = (-spec.vocab) % tp
    n_vocab_mats = 1 if spec.tied_embeddings else 2
    extra += pad * spec.hidden * 2 * n_vocab_mats
    assert shards == whole + extra


@pytest.mark.parametrize("name", ["llama-2-7b", "mixtral-8x7b", "opt-13b", "glm-130b", "qwen2.5-72b"])
def test_int8_is_about_half_of_fp16_plus_scales(name):
    spec = lookup(name).spec
    fp16 = total_weight_bytes(spec, "fp16")
    int8 = total_weight_bytes(spec, "int8")
    lin = [t for t in inventory(spec) if t.role in ("linear", "expert")]
    lin_params = sum(t.numel for t in lin)
    scales = sum(t.shape[0] for t in lin) * 2
    assert int8 == fp16 - lin_params + scales
    assert 0.5 < int8 / fp16 < 0.6


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["int4", "int4-g128", "int4-g64-zp", "nf4", "int8", "fp8", "absmax",
                        "llm-int8"]),
       st.integers(1, 4096), st.integers(1, 64).map(lambda g: g * 64))
def test_registry_bytes_formula(key, rows, cols):
    f = weight_format(key)
    if f.check_shape(rows, cols):
        return
    n = rows * cols
    payload = -(-n * f.bits // 8)
    if f.granularity == "channel":
        expect = payload + rows * f.scale_bytes
    elif f.granularity == "group":
        groups = rows * (cols // f.group)
        expect = payload + groups * 2 + (-(-groups * f.zero_bits // 8))
    elif f.granularity == "tensor":
        expect = payload + 4
    else:  # nf4: uint8 absmax per 64, fp32 per 256 blocks, fp32 offset
        blocks = -(-n // 64)
        expect = payload + blocks + (-(-blocks // 256)) * 4 + 4
    assert f.tensor_bytes(rows, cols) == expect


def test_int4_packs_two_per_byte():
    f = weight_format("int4-g128")
    assert f.tensor_bytes(4096, 4096) == 4096 * 4096 // 2 + 4096 * 32 * 2
    assert weight_format("int4-g128-zp").tensor_bytes(4096, 4096) == \
        4096 * 4096 // 2 + 4096 * 32 * 2 + 4096 * 32 // 2
    assert weight_format("int4").tensor_bytes(3, 3) == 5 + 3 * 2  # ceil(9 / 2) payload bytes


def test_group_size_must_divide_the_split_dim():
    spec = lookup("llama-2-7b").spec  # ffn 11008 = 86 x 128; at TP 4 down_proj has 2752 = 21.5 x 128 inputs
    estimate(spec, "int4-g128", "fp16", 2)  # 5504 = 43 x 128 is fine
    with pytest.raises(InfeasibleError, match="multiple of 128"):
        estimate(spec, "int4-g128", "fp16", 4)


def test_pipeline_stages_split_layers():
    assert stage_layers(32, 4) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert stage_layers(30, 4) == [(0, 7), (7, 15), (15, 23), (23, 30)]  # vLLM: extra before last
    spec = lookup("llama-2-7b").spec
    whole = total_weight_bytes(spec, "fp16")
    est = estimate(spec, "fp16", "fp16", 1, 4, Workload(1, 16, 0))
    assert sum(r.weights for r in est.ranks) == whole
    assert est.ranks[0].kv_cache * 4 == estimate(spec, "fp16", "fp16", 1, 1,
                                                  Workload(1, 16, 0)).ranks[0].kv_cache


def test_tied_embedding_copied_to_last_stage():
    spec = lookup("gpt2").spec
    whole = total_weight_bytes(spec, "fp16")
    est = estimate(spec, "fp16", "fp16", 1, 2, Workload(1, 16, 0))
    assert sum(r.weights for r in est.ranks) == whole + spec.vocab * spec.hidden * 2


def test_vllm_pads_vocab_to_64():
    spec = lookup("gpt2").spec  # 50257 -> 50304
    rt = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 16, 0), "runtime").ranks[0].weights
    vl = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 16, 0), "vllm").ranks[0].weights
    assert vl - rt == (50304 - 50257) * 768 * 2


def test_eager_attention_holds_scores_sdpa_does_not():
    """transformers 5 defaults to SDPA (no score matrix); with --attention eager it holds the
    masked scores, softmax's fp32 output and their cast back (planner/engines/hf.py). Before
    the transformers walk this test read eager scores off the default transformers profile,
    which encoded the wrong (eager) default."""
    from planner.engines import configure, engine

    spec = lookup("llama-2-7b").spec
    wl = Workload(1, 4096, 0)
    eager_eng = configure(engine("transformers"), {"attention": "eager"})
    eager = estimate(spec, "fp16", "fp16", 1, 1, wl, eager_eng).ranks[0]
    sdpa = estimate(spec, "fp16", "fp16", 1, 1, wl, "transformers").ranks[0]
    scores = 32 * 4096 * 4096
    d = eager.detail["activations"]
    assert d["attn.softmax.masked_scores"] == scores * 2
    assert d["attn.softmax.probs_fp32"] == scores * 4
    assert not any("scores" in k or "probs" in k for k in sdpa.detail["activations"])
    assert eager.activations > scores * 8 > sdpa.activations


def test_logits_last_position_vs_profile_run():
    spec = lookup("llama-3-8b").spec
    rt = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 16, 0), "runtime").ranks[0]
    assert rt.detail["activations"].get("lm_head.logits_fp32", 0) in (0, 128256 * 4)
    # vLLM reserves activations for its profile run (8192 tokens, 256 sampled sequences) even for a
    # 16-token workload.
    vl = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 16, 0), "vllm").ranks[0]
    assert vl.activations > rt.activations


def test_unfused_format_adds_dequant_scratch():
    spec = lookup("llama-2-7b").spec
    wl = Workload(1, 16, 0)
    fused = estimate(spec, "int4-g128", "fp16", 1, 1, wl).ranks[0].detail["activations"]
    nf4 = estimate(spec, "nf4", "fp16", 1, 1, wl).ranks[0].detail["activations"]
    assert "dequant_scratch" not in fused
    # kernels' torch-dequant-mm dequantizes the largest linear (gate/up/down) in fp32 before the
    # fp16 cast: int64 code indices, lookup, repeated block absmax and product (20 bytes per
    # weight), the block absmax, the repeated second-level scales, the two code tables; the
    # output is counted apart
    e = 11008 * 4096
    blocks = e // 64
    assert nf4["dequant_scratch"] == (20 * e + 4 * blocks + 4 * 256 * -(-blocks // 256)
                                      + 4 * 256 + 4 * 16 - 16 * 11008 * 2)


def test_cpu_device_has_no_cuda_overhead():
    spec = lookup("smollm2-135m").spec
    est = estimate(spec, "fp16", "fp16", 1, 1, Workload(1, 16, 0), device="cpu")
    assert est.ranks[0].overhead == 0
