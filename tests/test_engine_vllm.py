"""vLLM start-up accounting (planner/engines/vllm.py) against vLLM's own logs and source.

Two kinds of check:

* Published logs are the oracle. For each log the planner predicts, from the model, the GPU, TP and
  the flags alone, the ``GPU KV cache size: N tokens`` and ``Maximum concurrency`` lines; the
  prediction must be within 5% of what vLLM printed (planner/engines/NOTES.md, "vLLM", has the
  table with links). The same logs also print ``Available KV cache memory: X GiB``; from that
  figure the KV spec rules alone must give the logged token count exactly (up to the 0.005 GiB the
  log rounds away).
* Unit tests of the KV-spec rules against values derived by hand from vLLM 0.11.0's source
  (vllm/v1/kv_cache_interface.py, vllm/v1/core/kv_cache_utils.py); each docstring has the
  derivation.

Pure Python, no GPU, fast.
"""

from __future__ import annotations

import json

import pytest

from planner.engines import vllm as V
from planner.hardware import parse_gpu_set
from planner.paths import resolve_model

from planner_testutil import run_cli

GiB = 1 << 30

LOGS = "https://github.com/dennislee22/vLLM-benchmarking/blob/main/log/"

# model, gpu, tp, util, max_model_len, weights override (bytes per rank; None = the planner's),
# logged available GiB, logged tokens, logged concurrency, source. All vLLM 0.10.1.1, `vllm serve`
# with no batching flags (the log prints max_num_batched_tokens=2048: the A100 default).
PUBLISHED = [
    ("qwen2.5-7b", "a100-80g", 1, 0.25, 16384, None, 5.01, 93_872, 5.73,
     LOGS + "vllm-7B-1gpuA10080GB-0.25GRAM.log"),
    ("qwen2.5-7b", "a100-80g", 1, 0.50, 16384, None, 24.83, 464_848, 28.37,
     LOGS + "vllm-7B-1gpuA10080GB-0.5GRAM.log"),
    ("qwen2.5-7b", "a100-80g", 2, 0.50, 16384, None, 31.83, 1_192_160, 72.76,
     LOGS + "vllm-7B-2gpuA10080GB-0.5GRAM-same-node.log"),
    ("qwen2.5-7b", "a100-40g", 2, 0.50, 16384, None, 11.03, 412_944, 25.20,
     LOGS + "vllm-7B-2gpuA10040GB-0.5GRAM-diff-nodes.log"),
    # gpt-oss-120b ships mxfp4 experts, a format the registry does not have: the logged
    # "Model loading took 17.2217 GiB" stands in for the weights; everything else is predicted.
    ("gpt-oss-120b", "a100-80g", 4, 0.80, 16384, int(17.2217 * GiB), 45.32, 2_640_144, 284.25,
     LOGS + "vllm-120B-4gpuA10080GB-0.8GRAM-diff-nodes.log"),
]


def _gpu(name: str):
    return parse_gpu_set(f"1x{name}").devices[0].profile


def _spec(name: str):
    return resolve_model(name).spec


@pytest.mark.parametrize("row", PUBLISHED, ids=[r[9].rsplit("/", 1)[-1] for r in PUBLISHED])
def test_published_log_within_5_percent(row):
    """Qwen2-7B-Instruct is planned as the catalog's Qwen2.5-7B (same config: 28 layers, hidden
    3584, 28/4 heads, head_dim 128, ffn 18944, vocab 152064); bf16 as the logs say."""
    model, gpu, tp, util, mml, w, _, tokens, conc, _ = row
    st = V.startup(_spec(model), _gpu(gpu), tp=tp, weights="bf16", kv_cache="bf16",
                   max_model_len=mml, gpu_memory_utilization=util, weights_bytes=w)
    assert st.max_num_batched_tokens == 2048 and st.max_num_seqs == 256  # what the logs print
    assert abs(st.logged_tokens / tokens - 1) <= 0.05, (st.logged_tokens, tokens)
    assert abs(st.max_concurrency / conc - 1) <= 0.05, (st.max_concurrency, conc)


# From the logged "Available KV cache memory" alone: (layer specs, available GiB as logged,
# max_model_len, max_num_batched_tokens, logged tokens, logged concurrency, source).
def _dense(layers, kv_heads, head_dim, nbytes=2):
    page = 2 * 16 * kv_heads * head_dim * nbytes
    return [V.LayerSpec("full", 16, page)] * layers




def _spec_rows():
    q7 = _spec("qwen2.5-7b")
    oss = _spec("gpt-oss-120b")
    rows = []
    for model, gpu, tp, util, mml, w, avail, tokens, conc, src in PUBLISHED:
        s = oss if model == "gpt-oss-120b" else q7
        rows.append((V.layer_specs(s, tp, "bf16"), avail, mml, 2048, tokens, conc, src))
    # Qwen3-14B (40 layers, 8 KV heads, head_dim 128), vLLM 0.11, LMCache/LMCache#1739
    rows.append((_dense(40, 8, 128), 6.51, 32768, 8192, 42_656, 1.30,
                 "https://github.com/LMCache/LMCache/issues/1739"))
    # Qwen3-32B (64 layers, 8 KV heads, head_dim 128) with an fp8 KV cache, vLLM 0.26, H100:
    # "KV pool 37.42 GiB = 306,528 tokens = 131,072 bytes/token", 9.35x at 32,768
    rows.append((_dense(64, 8, 128, 1), 37.42, 32768, 8192, 306_528, 9.35,
                 "kvlm profiling notes (find_string id 62324372503)"))
    return rows


@pytest.mark.parametrize("row", _spec_rows(), ids=lambda r: r[-1].rsplit("/", 1)[-1])
def test_logged_available_memory_gives_the_logged_tokens(row):
    """get_num_blocks = available // page // group_size, tokens = blocks // groups × block_size:
    the logged token count must lie between the counts for the logged GiB ± 0.005 (its rounding),
    and the concurrency (2 decimals) likewise."""
    specs, avail, mml, mnbt, tokens, conc, _ = row
    lo = V.kv_cache_config(specs, int((avail - 0.005) * GiB), mml, mnbt)
    hi = V.kv_cache_config(specs, int((avail + 0.005) * GiB), mml, mnbt)
    assert lo.logged_tokens <= tokens <= hi.logged_tokens
    assert round(lo.max_concurrency, 2) - 0.01 <= conc <= round(hi.max_concurrency, 2) + 0.01


# -- KV-cache spec rules, derived by hand from vLLM 0.11.0 ---------------------------------------

def test_page_size_full_attention():
    """AttentionSpec.page_size_bytes = 2 × block_size × num_kv_heads × head_size × dtype size.
    Llama-3.1-8B (8 KV heads, head_dim 128), bf16, block 16: 2·16·8·128·2 = 65,536 bytes; at TP 2
    each rank holds 4 heads: 32,768; fp8 halves it: 32,768 at TP 1."""
    s = _spec("llama-3.1-8b")
    assert V.layer_specs(s, 1, "bf16")[0].page_bytes == 65_536
    assert V.layer_specs(s, 2, "bf16")[0].page_bytes == 32_768
    assert V.layer_specs(s, 1, "fp8")[0].page_bytes == 32_768
    assert len(V.layer_specs(s, 1)) == 32


def test_tp_beyond_kv_heads_replicates_one_head():
    """num_kv_heads per rank = max(1, total // TP) (ModelConfig.get_num_kv_heads): Llama-3.1-70B
    (8 KV heads) at TP 16 keeps one head per rank: 2·16·1·128·2 = 8,192 bytes."""
    s = _spec("llama-3.1-70b")
    assert V.layer_specs(s, 16, "bf16")[0].page_bytes == 8_192


def test_page_size_mla_and_block_size_per_backend():
    """MLAAttentionSpec.page_size_bytes = block_size × 1 × (kv_lora_rank + qk_rope_head_dim) ×
    dtype size, not split by TP. DeepSeek-V3: 512 + 64 = 576. The block is forced by the backend
    (vllm/platforms/cuda.py): FlashMLA on sm90 → 64 (64·576·2 = 73,728 bytes), CUTLASS MLA on
    sm100 → 128 (147,456), Ampere keeps 16 (18,432); a non-MLA model keeps 16 everywhere."""
    s = _spec("deepseek-v3")
    assert V.default_block_size(s, (9, 0)) == 64
    assert V.default_block_size(s, (10, 0)) == 128
    assert V.default_block_size(s, (8, 0)) == 16
    assert V.default_block_size(_spec("llama-3.1-8b"), (9, 0)) == 16
    for tp in (1, 8):
        assert V.layer_specs(s, tp, "bf16", 64)[0].page_bytes == 73_728
    assert V.layer_specs(s, 1, "bf16", 128)[0].page_bytes == 147_456
    assert V.layer_specs(s, 1, "bf16", 16)[0].page_bytes == 18_432


def test_uniform_model_one_group():
    """One spec for every layer → one group of all layers (_get_kv_cache_groups_uniform_spec):
    Llama-3.1-8B with 10 GiB: blocks = 10·2^30 // 65,536 // 32 = 5,120, tokens = 5,120 × 16 =
    81,920; at max_model_len 8,192 a request needs 512 blocks → 10.00x."""
    cfg = V.kv_cache_config(V.layer_specs(_spec("llama-3.1-8b"), 1), 10 * GiB, 8192, 2048)
    assert (cfg.num_blocks, cfg.logged_tokens, len(cfg.groups)) == (5_120, 81_920, 1)
    assert cfg.max_concurrency == pytest.approx(10.0)


def test_hybrid_gpt_oss_two_groups_halve_the_logged_tokens():
    """gpt-oss-120b: 18 sliding (window 128) + 18 full layers, same page → group_size 18, two
    groups (_get_kv_cache_groups_uniform_page_size). At TP 4 (2 KV heads of 64 per rank) the page
    is 2·16·2·64·2 = 8,192. With 1 GiB: blocks = 2^30 // 8,192 // 18 = 7,281; logged tokens =
    7,281 // 2 × 16 = 58,240. A 16,384-token request needs 1,024 full blocks plus
    ceil(min(127 + 2,048, 16,384) / 16) + 1 = 137 sliding blocks: 7,281 / 1,161 = 6.27x."""
    specs = V.layer_specs(_spec("gpt-oss-120b"), 4)
    cfg = V.kv_cache_config(specs, GiB, 16384, 2048)
    assert sorted((s.kind, n) for s, n in cfg.groups) == [("full", 18), ("sliding", 18)]
    assert cfg.page_bytes == 8_192 and cfg.num_blocks == 7_281
    assert cfg.logged_tokens == 58_240
    assert cfg.detail["blocks_per_request"] == 1_161
    assert cfg.max_concurrency == pytest.approx(7_281 / 1_161)


def test_hybrid_gemma3_pads_the_last_sliding_group():
    """Gemma-3-27B: 52 sliding (window 1024) + 10 full layers. group_size = min(52, 10) = 10; the
    sliding layers split into ceil(52/10) = 6 groups (sizes 9, 9, 9, 9, 8, 8 as layers[i::6]),
    the full ones into 1: 7 groups. Page 2·16·16·128·2 = 131,072. With 10 GiB: blocks =
    10·2^30 // 131,072 // 10 = 8,192; logged tokens = 8,192 // 7 × 16 = 18,720. A 32,768-token
    request: 2,048 full blocks + 6 × (ceil((1,023 + 8,192) / 16) + 1 = 577) = 5,510."""
    specs = V.layer_specs(_spec("gemma-3-27b"), 1)
    groups, size = V.group_layers(specs)
    assert size == 10
    assert sorted(n for s, n in groups if s.kind == "sliding") == [8, 8, 9, 9, 9, 9]
    assert [n for s, n in groups if s.kind == "full"] == [10]
    cfg = V.kv_cache_config(specs, 10 * GiB, 32768, 8192)
    assert cfg.num_blocks == 8_192 and cfg.logged_tokens == 18_720
    assert cfg.detail["blocks_per_request"] == 2_048 + 6 * 577


def test_disabled_hybrid_manager_counts_every_layer_as_full():
    """--disable-hybrid-kv-cache-manager: unify_hybrid_kv_cache_specs turns sliding layers into
    FullAttentionSpec, so gpt-oss has one group of 36 and a request needs 1,024 blocks."""
    specs = V.layer_specs(_spec("gpt-oss-120b"), 4, hybrid_manager=False)
    cfg = V.kv_cache_config(specs, GiB, 16384, 2048)
    assert len(cfg.groups) == 1 and cfg.group_size == 36
    assert cfg.logged_tokens == (GiB // 8_192 // 36) * 16
    assert cfg.detail["blocks_per_request"] == 1_024


def test_sliding_and_chunked_blocks_per_request():
    """SlidingWindowSpec: ceil(min(window − 1 + max_num_batched_tokens, max_model_len) / block)
    + 1; ChunkedLocalAttentionSpec: ceil(min(chunk + max_num_batched_tokens, max_model_len) /
    block). Window 4,096, 8,192 batched, 32,768 max: ceil(12,287 / 16) + 1 = 769; chunk 8,192:
    ceil(16,384 / 16) = 1,024; both capped by a 1,000-token max_model_len: 64 + 1 and 63."""
    sw = V.LayerSpec("sliding", 16, 1, 4096)
    ch = V.LayerSpec("chunked", 16, 1, 8192)
    assert sw.max_tokens(32768, 8192) == 769
    assert ch.max_tokens(32768, 8192) == 1_024
    assert sw.max_tokens(1000, 8192) == 64
    assert ch.max_tokens(1000, 8192) == 63


def test_default_batching_per_card():
    """EngineArgs._set_default_args: >= 70 GiB and not an A100 → 8192 tokens / 1024 seqs for
    `vllm serve` (16384 for LLM); otherwise 2048 / 256 (8192 for LLM)."""
    h100, a100, l4 = _gpu("h100-sxm"), _gpu("a100-80g"), _gpu("l4")
    assert V.default_batching(h100.name, h100.memory_bytes) == (8192, 1024)
    assert V.default_batching(h100.name, h100.memory_bytes, "llm") == (16384, 1024)
    assert V.default_batching(a100.name, a100.memory_bytes) == (2048, 256)
    assert V.default_batching(l4.name, l4.memory_bytes) == (2048, 256)


def test_budget_is_requested_minus_weights_activations_non_torch():
    """available = total × util − (weights + profile peak + non-torch), in integer bytes; the
    sampler runs on min(max_num_seqs, max_num_batched_tokens) rows."""
    st = V.startup(_spec("llama-3.1-8b"), _gpu("h100-sxm"), max_model_len=8192)
    assert all(isinstance(v, int) for v in (st.requested_bytes, st.weights_bytes,
                                            st.activation_bytes, st.available_bytes))
    assert st.available_bytes == (st.requested_bytes - st.weights_bytes - st.activation_bytes
                                  - st.non_torch_bytes)
    assert st.requested_bytes == int(V.CUDA_TOTAL_BYTES["h100-sxm"] * 0.9)
    few = V.startup(_spec("llama-3.1-8b"), _gpu("h100-sxm"), max_model_len=8192, max_num_seqs=64)
    assert few.activation_bytes < st.activation_bytes
    assert few.logged_tokens > st.logged_tokens


def test_sampler_bytes_from_source():
    """256 rows × 152,064 vocab: bf16 logits 2 B, fp32 copy 4 B, FlashInfer's top-k-masked fp32
    and its softmax 4 B each: 14 B per element = 545,009,664 bytes; TP 2 adds the bf16 shard."""
    d = V.sampler_bytes(256, 152_064, 1)
    assert sum(d.values()) == 256 * 152_064 * 14
    assert V.sampler_bytes(256, 152_064, 2)["logits_shard"] == 256 * 76_032 * 2


def test_estimate_prints_and_exports_the_vllm_lines():
    args = ("estimate", "-m", "qwen2.5-7b", "-e", "vllm", "--gpus", "1xa100-80g", "-w", "bf16",
            "--kv-cache", "bf16", "--context", "16384", "--gpu-memory-utilization", "0.5")
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "vLLM would log: " in r.stdout and "GPU KV cache size: " in r.stdout
    assert "Maximum concurrency for 16,384 tokens per request: " in r.stdout
    doc = json.loads(run_cli(*args, "--json").stdout)["vllm_startup"]
    assert abs(doc["gpu_kv_cache_tokens"] / 464_848 - 1) <= 0.05
    assert doc["version"] == V.VERSION and isinstance(doc["available_kv_bytes"], int)


def test_estimate_gpus_mistakes_are_one_line():
    for gpus, frag in (("cpu", "vllm"), ("2xh100-sxm", "needs 4 GPUs")):
        r = run_cli("estimate", "-m", "qwen2.5-7b", "-e", "vllm", "--gpus", gpus, "--tp", "4"
                    if gpus != "cpu" else "1")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("planner: error:") and frag in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1


def test_cuda_graph_capture_sizes():
    """cuda_graph_sizes = [min(2 × max_num_seqs, 512)] → 1, 2, 4, 8, 16, ..., 512: with
    max_num_seqs 256 that is 3 + 64 = 67 sizes, the list the A100 logs above print
    ("cudagraph_capture_sizes":[512,504,...,8,4,2,1]); max_num_seqs 8 → 1, 2, 4, 8, 16."""
    sizes = V.cuda_graph_capture_sizes(256, 2048)
    assert len(sizes) == 67 and sizes[0] == 512 and sizes[-3:] == [4, 2, 1]
    assert V.cuda_graph_capture_sizes(8, 2048) == [16, 8, 4, 2, 1]
    assert V.cuda_graph_capture_sizes(1024, 256)[0] == 256  # none above max_num_batched_tokens
