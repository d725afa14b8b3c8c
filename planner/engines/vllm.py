"""vLLM (V1 engine) memory behaviour, re-derived from its source: the profile run's activation
peak, the KV-cache spec of every layer, the hybrid KV-cache manager's grouping, and the two lines
vLLM logs at start-up (``GPU KV cache size: N tokens``, ``Maximum concurrency for L tokens per
request: X``).

Source read: vLLM 0.11.0 (PyPI sdist ``vllm-0.11.0.tar.gz``, ``vllm/_version.py`` commit
``f71952c1c``). Every rule below names the file it comes from; the code here is written from those
rules, not copied.

The budget (``vllm/v1/worker/gpu_worker.py`` ``Worker.init_device`` /
``determine_available_memory``, ``vllm/utils/__init__.py`` ``memory_profiling``)::

    requested  = cudaMemGetInfo total × gpu_memory_utilization       (snapshot after NCCL init)
    available  = requested − (weights + torch peak increase of the profile run
                              + non-torch increase since the snapshot)

CUDA graphs are captured after the KV cache is allocated (``compile_or_warm_up_model``) and are not
subtracted in 0.11.0 (the code says so: "memory_profiling does not consider CUDAGraph memory size").
The CUDA context and NCCL communicators exist before the snapshot, so they are not in the budget
either: they come on top of ``requested``.

Pure Python; importing it costs nothing beyond ``planner.engines``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1 << 30
MiB = 1 << 20

VERSION = "0.11.0"
COMMIT = "f71952c1c"

# -- the device total vLLM multiplies by gpu_memory_utilization --------------------------------
# torch.cuda.mem_get_info()[1] (cudaMemGetInfo) reports less than nvidia-smi's memory.total. The
# figures below are what published logs print for the card (GiB as printed, 2 decimals); a card
# not listed uses its profile's memory_bytes (nvidia-smi), which overstates the budget by the
# driver's reserve (about 0.4 GiB on the cards listed).
CUDA_TOTAL_BYTES: dict[str, int] = {
    # vLLM PR #10511 (youkaichao, Meta-Llama-3-8B on H100-80G): "total_gpu_memory 79.22GiB"
    "h100-sxm": int(79.22 * GiB),
    # PyTorch OOM message on an A100 80GB (levihsu/OOTDiffusion#235): "79.25 GiB total capacity"
    "a100-80g": int(79.25 * GiB),
    # PyTorch OOM message on an A100 40GB (TianheWu/CoSeR#10): "a total capacity of 39.50 GiB"
    "a100-40g": int(39.50 * GiB),
    # vLLM issue #10517 (RTX 3090, Llama-3.1-8B): "total_gpu_memory=23.58GiB"
    "rtx-3090": int(23.58 * GiB),
}

# -- non-torch memory measured by memory_profiling ---------------------------------------------
# memory_profiling counts (cuda used − torch reserved) growth from the post-NCCL snapshot to the
# end of the profile run: lazily loaded kernel images, cuBLAS/attention library handles, custom
# all-reduce IPC buffers. It is measured, not computed, in vLLM; the figures are llm-d-planner's
# H100 measurements of vLLM's own "non-torch" line (../shared/notes/peers.md §12): 0.15 GiB at
# TP 1, 0.6 GiB at TP >= 2.
NON_TORCH_TP1 = int(0.15 * GiB)
NON_TORCH_TPN = int(0.6 * GiB)


def non_torch_bytes(tp: int, pp: int = 1) -> int:
    return NON_TORCH_TP1 if tp * pp == 1 else NON_TORCH_TPN


# -- scheduler defaults ------------------------------------------------------------------------

def default_batching(gpu_name: str, memory_bytes: int, usage: str = "serve") -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM picks when the user sets neither
    (``vllm/engine/arg_utils.py`` ``EngineArgs._set_default_args``): on cards with at least
    70 GiB that are not an A100, 8192 tokens and 1024 sequences for ``vllm serve`` (16384 / 1024
    for the ``LLM`` class); otherwise 2048 / 256 (8192 / 256 for ``LLM``). max_num_seqs is capped
    at max_num_batched_tokens."""
    big = memory_bytes >= 70 * GiB and "a100" not in gpu_name.lower()
    if big:
        tokens, seqs = (8192, 1024) if usage == "serve" else (16384, 1024)
    else:
        tokens, seqs = (2048, 256) if usage == "serve" else (8192, 256)
    return tokens, min(seqs, tokens)


def default_block_size(spec, compute_capability: tuple[int, int] | None) -> int:
    """Tokens per KV block (``vllm/platforms/cuda.py`` ``check_and_update_config``): 16 unless the
    model uses MLA, where the backend forces its block: FlashMLA (Hopper, sm90) 64, CUTLASS MLA
    (Blackwell, sm100) 128; on other cards MLA runs on Triton/FlashAttention MLA with 16."""
    if getattr(spec, "mla", False) and compute_capability:
        if compute_capability[0] == 10:
            return 128
        if compute_capability[0] == 9:
            return 64
    return 16


def cuda_graph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """Batch sizes vLLM captures CUDA graphs for by default (``vllm/config/scheduler.py``:
    cuda_graph_sizes = [min(2 × max_num_seqs, 512)]; ``vllm/config/__init__.py``
    ``_set_cudagraph_sizes``: 1, 2, 4 and the multiples of 8 up to it, none above
    max_num_batched_tokens), largest first. In 0.11.0 the graphs are captured after the KV cache
    is sized, so their memory (logged "Graph capturing finished ... took X GiB") comes on top of
    gpu_memory_utilization; the planner carries it as the profile's cuda_graph_bytes overhead."""
    top = min(2 * max_num_seqs, 512)
    sizes = [1, 2, 4] + list(range(8, top + 1, 8))
    return sorted((x for x in sizes if x <= max_num_batched_tokens), reverse=True)


# -- KV cache spec per layer (vllm/v1/kv_cache_interface.py) ------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """One attention layer's KV-cache spec on one rank."""

    kind: str
    """``full``, ``sliding``, ``chunked`` or ``mla``."""
    block_size: int
    page_bytes: int
    """Bytes of one block of this layer (``page_size_bytes``)."""
    window: int = 0
    """Sliding window or attention chunk (0 for full / MLA)."""

    def max_tokens(self, max_model_len: int, max_num_batched_tokens: int) -> int:
        """Blocks one request can hold (``max_memory_usage_bytes`` / ``page_size_bytes``)."""
        b = self.block_size
        if self.kind == "sliding":
            # SlidingWindowSpec: the last window − 1 computed tokens plus one scheduled chunk,
            # at most max_model_len, plus one block because the window need not start on a block.
            n = min(self.window - 1 + max_num_batched_tokens, max_model_len)
            return -(-n // b) + 1
        if self.kind == "chunked":
            # ChunkedLocalAttentionSpec: the chunk plus one scheduled chunk, at most max_model_len.
            n = min(self.window + max_num_batched_tokens, max_model_len)
            return -(-n // b)
        return -(-max_model_len // b)  # FullAttentionSpec / MLAAttentionSpec


def dtype_bytes(kv_key: str) -> int:
    """vLLM's cache dtypes: ``auto`` = the model dtype (2 bytes), ``fp8`` (e4m3/e5m2) 1 byte."""
    if kv_key in ("fp16", "bf16"):
        return 2
    if kv_key == "fp8":
        return 1
    raise ValueError(f"vLLM has no KV-cache dtype {kv_key!r} (it runs auto/fp16/bf16 and fp8)")


def layer_specs(spec, tp: int, kv_key: str = "fp16", block_size: int = 16,
                layers: tuple[int, int] | None = None,
                hybrid_manager: bool = True) -> list[LayerSpec]:
    """The KV-cache spec of every attention layer one rank holds.

    AttentionSpec.page_size_bytes = 2 × block_size × kv_heads × head_size × dtype bytes (K and V);
    MLAAttentionSpec = block_size × 1 × (kv_lora_rank + qk_rope_head_dim) × dtype bytes (one
    latent, not split by TP). KV heads per rank: kv_heads / TP, at least 1 (a replicated head when
    TP > kv_heads). With ``--disable-hybrid-kv-cache-manager`` sliding and chunked layers become
    FullAttentionSpec (``unify_hybrid_kv_cache_specs``)."""
    nb = dtype_bytes(kv_key)
    lo, hi = layers if layers is not None else (0, spec.layers)
    if spec.mla:
        page = block_size * (spec.kv_lora_rank + spec.qk_rope_dim) * nb
        return [LayerSpec("mla", block_size, page) for _ in range(lo, hi)]
    heads = max(1, spec.kv_heads // tp)
    page = 2 * block_size * heads * spec.head_dim * nb
    out = []
    for i in range(lo, hi):
        kind, w = spec.layer_kind(i), spec.window_of(i)
        if not hybrid_manager or not w:
            kind, w = "full", 0
        out.append(LayerSpec(kind, block_size, page, w))
    return out


@dataclass
class KVCacheConfig:
    """What ``get_kv_cache_config_from_groups`` decides and logs
    (vllm/v1/core/kv_cache_utils.py)."""

    num_blocks: int
    groups: list[tuple[LayerSpec, int]]
    """(spec, layers in the group) of each KV-cache group."""
    logged_tokens: int
    """``GPU KV cache size: N tokens`` = num_blocks // groups × smallest block_size."""
    max_concurrency: float
    """``Maximum concurrency for max_model_len tokens per request``."""
    page_bytes: int
    group_size: int
    detail: dict = field(default_factory=dict)


def group_layers(specs: list[LayerSpec]) -> tuple[list[tuple[LayerSpec, int]], int]:
    """KV-cache groups and the group size.

    Uniform spec: one group of every layer (``_get_kv_cache_groups_uniform_spec``). Several kinds
    with one page size (``_get_kv_cache_groups_uniform_page_size``): group_size = the smallest layer
    count of a kind; each kind splits into ceil(n / group_size) groups (the last padded). Several
    page sizes of one kind fall in ``UniformTypeKVCacheSpecs`` (not produced by the specs here);
    kinds with different page sizes are refused by vLLM (NotImplementedError)."""
    by_kind: dict[LayerSpec, int] = {}
    for s in specs:
        by_kind[s] = by_kind.get(s, 0) + 1
    if len(by_kind) == 1:
        (s, n), = by_kind.items()
        return [(s, n)], n
    if len({s.page_bytes for s in by_kind}) != 1:
        raise ValueError("vLLM cannot group layers of different page sizes (kv_cache_utils."
                         "get_kv_cache_groups raises NotImplementedError)")
    size = min(by_kind.values())
    groups: list[tuple[LayerSpec, int]] = []
    for s, n in by_kind.items():
        k = -(-n // size)
        for g in range(k):
            groups.append((s, len(range(g, n, k))))
    return groups, size


def kv_cache_config(specs: list[LayerSpec], available_bytes: int, max_model_len: int,
                    max_num_batched_tokens: int,
                    groups: tuple[list[tuple[LayerSpec, int]], int] | None = None
                    ) -> KVCacheConfig:
    """num_blocks, the logged token count and the maximum concurrency for one worker.

    num_blocks = available // page_size // group_size (``get_num_blocks``: every group shares
    group_size tensors of page_size × num_blocks). Logged tokens = num_blocks // len(groups) ×
    block_size. Max concurrency (``get_max_concurrency_for_kv_cache_config``) = num_blocks /
    ceil(group_size × Σ_groups max_memory_usage / (page × group_size)), i.e. num_blocks over the
    blocks one request of max_model_len needs summed over the groups."""
    grouped, size = groups if groups is not None else group_layers(specs)
    page = grouped[0][0].page_bytes
    num_blocks = max(0, int(available_bytes) // page // size)
    blocks_per_request = sum(s.max_tokens(max_model_len, max_num_batched_tokens)
                             for s, _ in grouped)
    block = min(s.block_size for s, _ in grouped)
    tokens = num_blocks // len(grouped) * block
    conc = num_blocks / blocks_per_request if blocks_per_request else 0.0
    return KVCacheConfig(num_blocks=num_blocks, groups=grouped, logged_tokens=tokens,
                         max_concurrency=conc, page_bytes=page, group_size=size,
                         detail={"blocks_per_request": blocks_per_request,
                                 "kinds": sorted({s.kind for s, _ in grouped})})


# -- the profile run's activation peak ---------------------------------------------------------

def sampler_bytes(rows: int, vocab_pad: int, tp: int, act: int = 2,
                  flashinfer: bool = True) -> dict[str, int]:
    """Transients of ``_dummy_sampler_run`` for ``rows`` requests
    (vllm/v1/worker/gpu_model_runner.py): compute_logits gives rows × vocab/TP in the model
    dtype, all-gathered to rows × vocab on TP > 1 (vllm/model_executor/layers/logits_processor.py);
    the Sampler converts to fp32
    (vllm/v1/sample/sampler.py). The dummy metadata sets both top_k and top_p, so with FlashInfer
    (the default when installed, vllm/v1/sample/ops/topk_topp_sampler.py) it calls
    top_k_top_p_sampling_from_logits, which keeps a top-k-masked fp32 copy and its fp32 softmax
    (flashinfer/sampling.py, read from memory of flashinfer 0.2-0.3, not re-read here); without
    FlashInfer apply_top_k_top_p sorts: fp32 values + int64 indices + a scattered fp32 result,
    then softmax probs and the exponential noise q."""
    n = rows * vocab_pad
    d = {"logits": n * act, "logits_fp32": n * 4}
    if tp > 1:
        d["logits_shard"] = rows * (vocab_pad // tp) * act
    if flashinfer:
        d["topk_masked_fp32"] = n * 4
        d["probs_fp32"] = n * 4
    else:
        d.update(sorted_fp32=n * 4, sort_index_int64=n * 8, scattered_fp32=n * 4,
                 probs_fp32=n * 4)
    return d


def forward_bytes(spec, tp: int, tokens: int, act: int = 2) -> dict[str, int]:
    """Largest transient set of one decoder layer in ``_dummy_run(max_num_batched_tokens,
    is_profile=True)``: no attention metadata is built, so the attention kernels return early
    (FlashAttentionImpl.forward: "Profiling run") and only the output buffer is allocated; the MLP
    holds gate_up (2 × ffn / TP) and its activation (ffn / TP) beside the residual and the normed
    input (fused_add_rms_norm); an MoE layer holds the router logits and fused_moe's three
    intermediate caches (tokens × top_k × {2 × ffn_e, ffn_e, hidden})."""
    h = spec.hidden
    T = tokens
    stream = 2 * T * h * act
    heads_r = spec.heads // tp
    if spec.mla:
        qkv = T * heads_r * spec.q_head_dim * act + T * (spec.kv_lora_rank + spec.qk_rope_dim) * act
    else:
        qkv = T * (heads_r + 2 * max(1, spec.kv_heads // tp)) * spec.head_dim * act
    attn = {"hidden": stream, "qkv": qkv, "attn_out": T * heads_r * spec.v_dim * act}
    best = attn
    dense = spec.layers - spec.moe_layer_count()
    if dense:
        w = spec.ffn // tp
        mlp = {"hidden": stream, "gate_up": (2 if spec.gated_ffn else 1) * T * w * act}
        if spec.gated_ffn:
            mlp["act"] = T * w * act
        if sum(mlp.values()) > sum(best.values()):
            best = mlp
    if spec.moe:
        w = (spec.expert_ffn or spec.ffn) // tp
        k = spec.experts_per_token
        moe = {"hidden": stream, "router": T * spec.experts * 4,
               "moe_cache1": T * k * 2 * w * act, "moe_cache2": T * k * w * act,
               "moe_cache3": T * k * h * act}
        if spec.shared_experts:
            moe["shared_out"] = T * h * act
        if sum(moe.values()) > sum(best.values()):
            best = moe
    return best


def profile_peak(spec, tp: int, tokens: int, seqs: int, vocab_pad: int, has_head: bool,
                 act: int = 2, flashinfer: bool = True) -> tuple[int, dict[str, int]]:
    """Torch peak increase of ``profile_run``: the larger of the forward's layer transients and
    the sampler run on min(max_num_seqs, max_num_batched_tokens) rows, with the forward's output
    hidden states (tokens × hidden) alive through both (profile_run keeps them)."""
    kept = tokens * spec.hidden * act
    fwd = forward_bytes(spec, tp, tokens, act)
    phases = {"forward": sum(fwd.values())}
    samp: dict[str, int] = {}
    if has_head:
        rows = min(seqs, tokens)
        samp = sampler_bytes(rows, vocab_pad, tp, act, flashinfer)
        phases["sampler"] = kept + sum(samp.values())
    name = max(phases, key=phases.get)
    det = ({f"forward.{k}": v for k, v in fwd.items()} if name == "forward" else
           {"sampler.hidden_kept": kept, **{f"sampler.{k}": v for k, v in samp.items()}})
    return phases[name], det


def activation_peak(step) -> tuple[int, dict[str, int]]:
    """The EngineStep hook (planner.memory.engine_walk): the profile run's torch peak increase on
    this stage's rank for the profile's max_num_batched_tokens and max_num_seqs."""
    act = 4 if step.fmt.key == "fp32" else 2
    if step.layers[1] <= step.layers[0] and not step.has_head:
        return 0, {}
    return profile_peak(step.spec, step.tp, step.tokens, step.seqs, step.vocab_pad, step.has_head,
                        act)


# -- the whole start-up prediction -------------------------------------------------------------

@dataclass
class Startup:
    """vLLM's start-up accounting on the busiest worker and the two lines it logs."""

    requested_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    available_bytes: int
    block_size: int
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    config: KVCacheConfig | None
    device_total_bytes: int
    device_total_source: str

    @property
    def logged_tokens(self) -> int:
        return self.config.logged_tokens if self.config else 0

    @property
    def max_concurrency(self) -> float:
        return self.config.max_concurrency if self.config else 0.0

    def line(self) -> str:
        if self.available_bytes <= 0 or not self.config:
            return ("vLLM would fail: Available KV cache memory "
                    f"{self.available_bytes / GiB:.2f} GiB (no memory for the cache blocks)")
        return (f"vLLM would log: Available KV cache memory: {self.available_bytes / GiB:.2f} GiB; "
                f"GPU KV cache size: {self.logged_tokens:,} tokens; Maximum concurrency for "
                f"{self.max_model_len:,} tokens per request: {self.max_concurrency:.2f}x")

    def to_json(self) -> dict:
        c = self.config
        return {"version": VERSION, "requested_bytes": self.requested_bytes,
                "weights_bytes": self.weights_bytes, "activation_bytes": self.activation_bytes,
                "non_torch_bytes": self.non_torch_bytes, "available_kv_bytes": self.available_bytes,
                "device_total_bytes": self.device_total_bytes,
                "device_total_source": self.device_total_source,
                "block_size": self.block_size,
                "max_num_batched_tokens": self.max_num_batched_tokens,
                "max_num_seqs": self.max_num_seqs, "max_model_len": self.max_model_len,
                "cuda_graph_capture_sizes": len(cuda_graph_capture_sizes(
                    self.max_num_seqs, self.max_num_batched_tokens)),
                "num_blocks": c.num_blocks if c else 0,
                "kv_cache_groups": len(c.groups) if c else 0,
                "gpu_kv_cache_tokens": self.logged_tokens,
                "max_concurrency": round(self.max_concurrency, 2)}


def device_total(profile_name: str, memory_bytes: int) -> tuple[int, str]:
    if profile_name in CUDA_TOTAL_BYTES:
        return CUDA_TOTAL_BYTES[profile_name], "cudaMemGetInfo total as published logs print it"
    return memory_bytes, "the GPU profile's memory (nvidia-smi); CUDA reports a little less"


def startup(spec, gpu, tp: int = 1, pp: int = 1, weights: str = "fp16", kv_cache: str = "fp16",
            max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
            max_num_batched_tokens: int | None = None, max_num_seqs: int | None = None,
            block_size: int | None = None, weights_bytes: int | None = None,
            usage: str = "serve", hybrid_manager: bool = True, flashinfer: bool = True,
            quantize_lm_head: bool = False) -> Startup:
    """Predict vLLM's start-up on ``gpu`` (a hardware profile: name, memory_bytes,
    compute_capability) at TP × PP: the available KV memory, the logged KV token count and the
    maximum concurrency. Options left None take vLLM's defaults for that card. ``weights_bytes``
    replaces the planner's weight bytes per rank (a format the registry lacks, e.g. mxfp4)."""
    from planner.engines import engine
    from planner.memory import estimate, padded_vocab, stage_layers, Workload

    name = getattr(gpu, "name", str(gpu))
    mem = getattr(gpu, "memory_bytes")
    cc = getattr(gpu, "compute_capability", None)
    d_tokens, d_seqs = default_batching(name, mem, usage)
    mnbt = max_num_batched_tokens or d_tokens
    mns = min(max_num_seqs or d_seqs, mnbt)
    block = block_size or default_block_size(spec, cc)
    mml = max_model_len or spec.max_context
    total, total_src = device_total(name, mem)
    requested = int(total * gpu_memory_utilization)
    eng = engine("vllm")
    vocab_pad = padded_vocab(spec, tp, eng)
    act = 4 if weights == "fp32" else 2
    stages = stage_layers(spec.layers, pp)
    if weights_bytes is None:
        est = estimate(spec, weights, kv_cache, tp, pp, Workload(1, 1, 0), eng,
                       quantize_lm_head=quantize_lm_head)
        per_stage_w = [est.ranks[s * tp].weights for s in range(pp)]
    else:
        per_stage_w = [int(weights_bytes)] * pp
    nt = non_torch_bytes(tp, pp)
    # every worker sizes its own blocks; the engine keeps the smallest count (get_kv_cache_configs)
    all_specs = layer_specs(spec, tp, kv_cache, block, None, hybrid_manager)
    grouping = group_layers(all_specs)
    best: tuple | None = None
    for s, (lo, hi) in enumerate(stages):
        peak, _ = profile_peak(spec, tp, mnbt, mns, vocab_pad, s == pp - 1, act, flashinfer)
        avail = requested - per_stage_w[s] - peak - nt
        mine = layer_specs(spec, tp, kv_cache, block, (lo, hi), hybrid_manager)
        size = grouping[1]
        if pp > 1:  # this worker's share of each global group (layers[i::k] per kind)
            kinds: dict = {}
            for g, _ in grouping[0]:
                kinds[g] = kinds.get(g, 0) + 1
            size = max(-(-sum(1 for x in mine if x == g) // k) for g, k in kinds.items())
        cfg = (kv_cache_config(mine, avail, mml, mnbt, (grouping[0], size))
               if avail > 0 and mine else None)
        key = cfg.num_blocks if cfg else -1
        if best is None or key < best[0]:
            best = (key, avail, per_stage_w[s], peak, cfg)
    _, avail, w, peak, cfg = best
    return Startup(requested_bytes=requested, weights_bytes=w, activation_bytes=peak,
                   non_torch_bytes=nt, available_bytes=avail, block_size=block,
                   max_num_batched_tokens=mnbt, max_num_seqs=mns, max_model_len=mml, config=cfg,
                   device_total_bytes=total, device_total_source=total_src)
