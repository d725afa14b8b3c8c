"""Engine profiles: the assumptions that differ between inference engines, each named and sourced.

A prediction always names its engine. The ``runtime`` profile describes this project's own runtime
(``planner launch``), the one whose predictions are measured; the others model an engine with its
assumptions written down here, so a user can see exactly what was assumed.

Every constant that is not derived from the model is an assumption and carries a comment saying where
it comes from. Figures marked "to be calibrated" are placeholders until ``planner launch`` measures
them on a GPU (DESIGN §9); on the CPU the runtime has no CUDA context and they do not apply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from planner.errors import InputError, lookup

MiB = 1 << 20

ALL_FORMATS = "*"


@dataclass(frozen=True)
class EngineProfile:
    """What one engine allocates, beyond the model's own tensors."""

    name: str
    """Engine key (``--engine``)."""
    description: str
    """One line: which engine and version the assumptions describe."""
    attention: str
    """``sdpa`` (flash / memory-efficient: no score matrix) or ``eager`` (b × heads × s_q × s_kv scores
    in the activation dtype plus an fp32 softmax copy)."""
    repeat_kv: bool
    """Eager GQA expands K and V to all query heads before the matmul (HF ``repeat_kv``)."""
    logits_all_positions: bool
    """Logits for every prompt position (True) or only the last position of each sequence."""
    prefill_chunk_tokens: int
    """Prompt tokens per forward step across the batch (0 = the whole prompt of the whole batch)."""
    profile_tokens: int
    """Activations are reserved for a dummy batch of this many tokens whatever the workload (vLLM's
    profile run at max_num_batched_tokens); 0 = sized from the workload."""
    profile_seqs: int
    """Sequences whose logits the profile run samples (vLLM max_num_seqs); 0 = the workload's batch."""
    kv_block_tokens: int
    """Paged KV cache block size in tokens (0 = contiguous cache)."""
    sliding_window_cache: bool
    """KV cache of sliding-window and chunked layers is capped at the window (False = every layer
    grows with the context)."""
    vocab_pad_multiple: int
    """Embedding/LM head rows are padded to a multiple of this (and of TP)."""
    supports_tp: bool
    """Megatron-style tensor parallelism (llama.cpp splits by layers instead: use --pp)."""
    weight_formats: tuple[str, ...]
    """Weight formats the engine runs (``*`` = every registry format not limited to another engine)."""
    kv_formats: tuple[str, ...]
    """KV-cache formats the engine runs."""
    fused_formats: tuple[str, ...]
    """Quantized formats computed without materializing a dequantized weight; others need a scratch
    copy of the largest linear shard in the activation dtype during its matmul."""
    gpu_memory_utilization: float
    """Fraction of device memory the engine may use (vLLM); 0 = all of it minus overhead."""
    cuda_context_bytes: int
    """CUDA context, module images and driver allocations per GPU (outside the caching allocator)."""
    workspace_bytes: int
    """cuBLAS / attention library workspaces per GPU."""
    nccl_bytes: int
    """NCCL communicator buffers per GPU when more than one rank is used."""
    cuda_graph_bytes: int
    """Memory held by captured CUDA graphs per GPU."""
    cpu_overhead_bytes: int = 0
    """Fixed overhead on a CPU rank (the runtime on ``--device cpu``)."""
    cpu_fused_formats: tuple[str, ...] = ()
    """Quantized formats with a packed CPU kernel (no dequantized copy) on ``--device cpu``."""
    activation_model: str = "phases"
    """``phases``: the largest of the attention, MLP and LM-head phases, each a sum of its parts;
    ``runtime``: planner.memory walks this project's runtime forward step allocation by allocation
    (runtime/model.py), as measured by ``planner launch``."""

    uniform_window_cache: bool = True
    """The cap applies also when every layer is sliding (Mistral-7B); llama.cpp caps only models
    with interleaved full and sliding/chunked layers (its iSWA cache)."""
    window_extra_tokens: int = 0
    """Tokens a capped layer holds beyond the window: llama.cpp keeps n_swa + n_ubatch (its SWA
    cache), transformers' DynamicSlidingWindowLayer keeps the last window - 1."""
    fused_softcap: bool = True
    """Attention softcapping runs inside the fused attention kernel (FlashAttention's softcap
    argument); False = softcapped models fall back to explicit score matrices."""
    flash_attn: bool = False
    """llama.cpp ``--flash-attn``: attention without a KQ score matrix in the compute graph."""
    cuda_graphs: bool = True
    """The engine captures CUDA graphs (vLLM without ``--enforce-eager``); cuda_graph_bytes counts
    only then."""
    version: str = ""
    """The engine version whose source or documentation the constants above were read from."""
    kv_pad_tokens: int = 0
    """A contiguous cache's cells per sequence are a multiple of this (llama.cpp pads n_ctx to 256);
    0 = exactly the tokens held."""
    embedding_on_host: bool = False
    """The token embedding stays in host memory on a GPU rank (llama.cpp's input layer); a tied LM
    head is then a second copy on the GPU."""
    kv_aliases: tuple[tuple[str, str], ...] = ()
    """KV-cache keys the engine stores in another format (llama.cpp: int8 -> q8_0, int4 -> q4_0)."""
    kv_follows_model_dtype: bool = False
    """The KV cache takes the model's dtype (transformers' DynamicCache stores k_proj/v_proj
    outputs as they are): an unquantized --kv-cache other than an fp32/fp16/bf16 model's own dtype
    is planned in the model's dtype, with a warning."""
    options: tuple[str, ...] = ()
    """The engine options (OPTIONS keys) a user sets in this engine; others are refused."""
    measured_formats: tuple[str, ...] = ()
    """Weight formats whose prediction has been measured against this engine (the runtime: the
    formats its CPU launch tests run); an estimate in another format carries a warning. Empty =
    no such record (no warning)."""

    def allows_weights(self, key: str, engines: tuple[str, ...]) -> bool:
        if engines and self.name not in engines:
            return False
        return ALL_FORMATS in self.weight_formats or key in self.weight_formats or (
            key.startswith("int4-g") and "int4-gN" in self.weight_formats)

    def is_fused(self, key: str, device: str = "cuda") -> bool:
        if key.startswith("int4-g"):
            key = "int4-gN-zp" if key.endswith("-zp") else "int4-gN"
        return key in (self.cpu_fused_formats if device == "cpu" else self.fused_formats)


_PROFILES = {p.name: p for p in [
    EngineProfile(
        name="runtime",
        description="this project's runtime (planner launch): SDPA attention, contiguous KV cache "
                    "allocated up front, last-position logits, Triton fused int8/int4 kernels",
        attention="sdpa", repeat_kv=False, logits_all_positions=False, prefill_chunk_tokens=0,
        profile_tokens=0, profile_seqs=0, kv_block_tokens=0,
        # runtime/model.py KVCache: sliding and chunked layers keep a ring buffer of exactly
        # min(context, window) tokens (window_extra_tokens 0), also when every layer slides.
        # Attention softcapping and sinks run on explicit scores (planner/activations.py walks
        # them); fused_softcap only steers the phase model, which this profile does not use.
        sliding_window_cache=True,
        # Vocab-parallel embedding: rows padded to a multiple of TP only.
        vocab_pad_multiple=1, supports_tp=True,
        weight_formats=(ALL_FORMATS,), kv_formats=("fp16", "bf16", "fp8", "int8", "int4"),
        # kernels/api.py kernel_for on CUDA: Triton GEMV/GEMM for int8 and int4 formats and
        # triton-llm-int8 for llm-int8 (fused: no dequantized weight); fp8, nf4 and absmax
        # dequantize first (torch-dequant-mm). The walk (planner/activations.py) follows the same
        # dispatch per linear call; this tuple states it for the record.
        fused_formats=("int8", "int4", "int4-gN", "int4-gN-zp", "llm-int8"),
        gpu_memory_utilization=0.0,
        # Assumption, to be calibrated by `planner launch` on a GPU: a PyTorch CUDA context with
        # lazy module loading (CUDA >= 11.7) is typically 300-600 MiB; 512 MiB taken.
        cuda_context_bytes=512 * MiB,
        # PyTorch's default cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG ":4096:8" = 8 x 4 MiB on
        # Hopper; smaller on older GPUs): 32 MiB taken as the upper figure.
        workspace_bytes=32 * MiB,
        # Assumption: NCCL communicator buffers with default NCCL_BUFFSIZE (4 MiB) over a few
        # channels; aiconfigurator measured 342-392 MB on H100 SXM (../shared/notes/peers.md §11).
        nccl_bytes=384 * MiB,
        cuda_graph_bytes=0,
        # kernels/: on the CPU only int8 has a packed kernel (torch._weight_int8pack_mm); int4
        # formats run the fp32 dequantize-then-matmul reference (kernels/NOTES.md, "Dispatch").
        cpu_fused_formats=("int8",),
        activation_model="runtime",
        # The formats tests/runtime launches on the CPU (test_runtime_formats.py: every one at TP
        # 1 and TP 2, predicted == measured activations; runtime/NOTES.md "Weight formats").
        measured_formats=("fp32", "fp16", "bf16", "fp8", "int8", "llm-int8", "int4",
                          "int4-g128", "int4-g128-zp", "nf4", "absmax"),
    ),
    EngineProfile(
        name="vllm",
        description="vLLM 0.11 V1 serving defaults: FlashAttention, paged KV (block 16), "
                    "activations reserved by a profile run of max_num_batched_tokens, 0.9 "
                    "utilization cap (planner/engines/vllm.py)",
        attention="sdpa", repeat_kv=False, logits_all_positions=False,
        # vllm/engine/arg_utils.py _set_default_args (0.11.0): `vllm serve` on a card of at least
        # 70 GiB that is not an A100 takes max_num_batched_tokens 8192 and max_num_seqs 1024
        # (2048 / 256 on smaller cards and A100s; planner/engines/vllm.py default_batching picks
        # per card where a GPU is known). The profile run uses the same token count.
        prefill_chunk_tokens=8192, profile_tokens=8192,
        # The profile run samples logits for min(max_num_seqs, max_num_batched_tokens) requests.
        profile_seqs=1024,
        # CacheConfig.block_size None -> 16 on CUDA (vllm/platforms/cuda.py); MLA backends force
        # 64 (FlashMLA, sm90) or 128 (CUTLASS MLA, sm100): vllm.default_block_size.
        kv_block_tokens=16, sliding_window_cache=True,
        # VocabParallelEmbedding pads the vocabulary to a multiple of 64 (DEFAULT_VOCAB_PADDING_SIZE).
        vocab_pad_multiple=64, supports_tp=True,
        weight_formats=("fp16", "bf16", "fp8", "int8", "int4", "int4-gN", "int4-gN-zp", "nf4",
                        "llm-int8"),
        kv_formats=("fp16", "bf16", "fp8"),
        # Marlin/Machete (int4/int8 weight-only), fp8 GEMMs, bitsandbytes kernels dequantize inside.
        fused_formats=("fp8", "int8", "int4", "int4-gN", "int4-gN-zp", "nf4", "llm-int8"),
        # CacheConfig.gpu_memory_utilization default 0.9 (vllm/config/cache.py, 0.11.0).
        gpu_memory_utilization=0.9,
        cuda_context_bytes=512 * MiB,  # as for the runtime (same PyTorch/CUDA stack)
        workspace_bytes=32 * MiB,
        # llm-d-planner measured vLLM non-torch memory 0.15 GiB at TP 1 and 0.6 GiB at TP >= 2 on
        # H100 (peers.md §12); the difference is taken as NCCL + custom all-reduce buffers.
        nccl_bytes=460 * MiB,
        # Assumption: CUDA graph capture for the default batch sizes holds about 0.5 GiB per GPU
        # (vLLM logs "Graph capturing finished ... took 0.50 GiB" for Qwen2-7B on an A100,
        # dennislee22/vLLM-benchmarking); 0.11.0 captures after sizing the KV cache, so this is
        # memory on top of gpu_memory_utilization, not subtracted from the KV budget.
        cuda_graph_bytes=512 * MiB,
        # The profile run's torch peak: planner/engines/vllm.py activation_peak.
        activation_model="vllm",
        version="0.11.0 (sdist, commit f71952c1c)",
        options=("max_num_batched_tokens", "max_num_seqs", "gpu_memory_utilization",
                 "block_size", "cuda_graphs"),
    ),
    EngineProfile(
        name="transformers",
        description="Hugging Face transformers generate(): SDPA attention (eager with --attention "
                    "eager), DynamicCache growing by torch.cat in the model's dtype, last-position "
                    "logits",
        version="transformers 5.24.0",
        # get_correct_attn_implementation picks "sdpa" when attn_implementation is not given
        # (modeling_utils.py, transformers 5.24.0); eager expands K/V with repeat_kv
        # (models/llama/modeling_llama.py eager_attention_forward).
        attention="sdpa", repeat_kv=False,
        # generate() sets logits_to_keep=1 when forward() takes it (generation/utils.py, 5.24.0,
        # _supports_logits_to_keep): last position only, then an fp32 copy.
        logits_all_positions=False, prefill_chunk_tokens=0, profile_tokens=0, profile_seqs=0,
        kv_block_tokens=0,
        # DynamicCache(config=...) gives sliding layers a DynamicSlidingWindowLayer (cache_utils.py,
        # 5.24.0): after torch.cat([keys, new]) it keeps the view [..., -window + 1:, :] (the
        # storage behind it, one token more or the whole prompt, is in the activation walk:
        # planner/engines/hf.py); full layers keep every token. SDPA cannot softcap: Gemma 2's
        # softcapping needs eager scores.
        sliding_window_cache=True, window_extra_tokens=-1, fused_softcap=False,
        vocab_pad_multiple=1, supports_tp=True,
        weight_formats=(ALL_FORMATS,), kv_formats=("fp16", "bf16", "fp32", "int8", "int4"),
        # bitsandbytes and GPTQ/AWQ kernels dequantize inside their matmuls.
        fused_formats=("int4-gN-zp", "nf4", "llm-int8", "int8", "int4", "int4-gN"),
        gpu_memory_utilization=0.0,
        cuda_context_bytes=512 * MiB, workspace_bytes=32 * MiB, nccl_bytes=384 * MiB,
        cuda_graph_bytes=0,
        # planner/engines/hf.py walks one generate() step of transformers allocation by allocation
        # (measured against transformers itself: planner/engines/NOTES.md, "transformers").
        activation_model="hf", kv_follows_model_dtype=True,
        options=("attention",),
    ),
    EngineProfile(
        name="llama.cpp",
        description="llama.cpp (llama-server / llama-cpp-python): contiguous KV cache of n_ctx "
                    "padded to 256, flash attention auto (on), ubatch 512, compute buffer of the "
                    "reserved graph (logits of the whole ubatch), token embedding on the host, "
                    "layer split across GPUs (use --pp), GGML block formats",
        # Every rule below and in planner/engines/llamacpp.py is read from llama.cpp at commit
        # 0c1e57098bba43ac29e6e3b677cdceebdd22334f (vendored in llama-cpp-python 0.3.36) and
        # measured against it (planner/engines/NOTES.md, "llama.cpp").
        version="llama.cpp 0c1e570 (llama-cpp-python 0.3.36)",
        attention="eager", repeat_kv=False, logits_all_positions=False,
        # n_ubatch default 512 (llama_context_default_params, src/llama-context.cpp).
        prefill_chunk_tokens=512, profile_tokens=0, profile_seqs=0, kv_block_tokens=0,
        # llama.cpp sizes the cache for the whole context (n_ctx) except for architectures with
        # interleaved SWA / chunked layers (Gemma 2/3, gpt-oss, Llama 4), whose windowed layers get
        # a cache of n_swa + n_ubatch tokens (src/llama-kv-cache-iswa.cpp, swa_full off by
        # default); a Mistral-style all-sliding model is cached in full. --ubatch moves the 512.
        sliding_window_cache=True, uniform_window_cache=False, window_extra_tokens=512,
        # src/llama-context.cpp: cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256); the iSWA cache pads
        # its window the same way (GGML_PAD(min(size_base, n_swa + n_ubatch), 256)).
        kv_pad_tokens=256,
        # src/llama-model.cpp load_tensors: the input layer (tok_embd) is always on the CPU.
        embedding_on_host=True,
        fused_softcap=False, vocab_pad_multiple=1, supports_tp=False,
        weight_formats=("fp32", "fp16", "bf16", "q8_0", "q6_k", "q5_1", "q5_0", "q5_k", "q4_k",
                        "q4_1", "q4_0", "q3_k", "q2_k"),
        # --cache-type-k/v: f16, bf16, q8_0, q4_0 (GGML blocks of 32; int8/int4 name the same).
        kv_formats=("fp16", "bf16", "q8_0", "q4_0", "int8", "int4"),
        kv_aliases=(("int8", "q8_0"), ("int4", "q4_0")),
        fused_formats=("q8_0", "q6_k", "q5_1", "q5_0", "q5_k", "q4_k", "q4_1", "q4_0", "q3_k",
                       "q2_k"),
        gpu_memory_utilization=0.0,
        # gguf-parser's default --platform-footprint of 250 MiB VRAM (peers.md §6) for the CUDA
        # context and driver; llama.cpp does not use PyTorch's allocator.
        cuda_context_bytes=250 * MiB, workspace_bytes=0, nccl_bytes=0, cuda_graph_bytes=0,
        # llama_context_default_params: flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO, which
        # resolve_fused_ops turns on where the backend runs FLASH_ATTN_EXT (CPU, CUDA, Metal).
        flash_attn=True,
        # planner/engines/llamacpp.py: compute, KV and output buffers as llama.cpp reserves them.
        activation_model="llamacpp",
        options=("ubatch", "flash_attn"),
    ),
]}


@dataclass(frozen=True)
class EngineOption:
    """An option users set in the engine itself, as a planner flag with the engine's own name."""

    flag: str
    """The CLI flag (as the engine spells it)."""
    help: str
    parse: Callable[[str], Any]
    """Text to value; raises InputError with one line."""
    apply: Callable[[EngineProfile, Any], dict[str, Any]]
    """The profile fields the value sets."""


def _int_in(flag: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        from planner.units import parse_tokens
        v = parse_tokens(text, flag, lo)
        if v > hi:
            raise InputError(f"{flag} must be at most {hi:,}, got {v:,}")
        return v
    return parse


def _on_off(flag: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        t = str(text).strip().lower()
        if t in ("on", "true", "1", "yes"):
            return True
        if t in ("off", "false", "0", "no"):
            return False
        raise InputError(f"{flag} must be on or off, got {text!r}")
    return parse


def _choice(flag: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = str(text).strip().lower()
        if t not in choices:
            raise InputError(f"{flag} must be one of {', '.join(choices)}, got {text!r}")
        return t
    return parse


def _fraction(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            v = float("nan")
        if not 0 < v <= 1:  # also refuses NaN
            raise InputError(f"{flag} must be a number in (0, 1], got {text!r}")
        return v
    return parse


OPTIONS: dict[str, EngineOption] = {
    "attention": EngineOption("--attention", "attention implementation (transformers "
                              "attn_implementation): sdpa or eager",
                              _choice("--attention", ("sdpa", "eager")),
                              lambda e, v: {"attention": v, "repeat_kv": v == "eager"}),
    "ubatch": EngineOption("--ubatch", "physical micro-batch in tokens (llama.cpp -ub / n_ubatch)",
                           _int_in("--ubatch", 1, 1 << 20),
                           # llama.cpp's SWA cache holds n_swa + n_ubatch tokens
                           lambda e, v: {"prefill_chunk_tokens": v, "window_extra_tokens": v}),
    "flash_attn": EngineOption("--flash-attn", "llama.cpp -fa: on or off",
                               _on_off("--flash-attn"), lambda e, v: {"flash_attn": v}),
    "max_num_batched_tokens": EngineOption(
        "--max-num-batched-tokens", "tokens per scheduler step and of the profile run (vLLM)",
        _int_in("--max-num-batched-tokens", 1, 1 << 24),
        lambda e, v: {"prefill_chunk_tokens": v, "profile_tokens": v}),
    "max_num_seqs": EngineOption("--max-num-seqs", "sequences per step, sampled by the profile "
                                 "run (vLLM)", _int_in("--max-num-seqs", 1, 1 << 20),
                                 lambda e, v: {"profile_seqs": v}),
    "gpu_memory_utilization": EngineOption(
        "--gpu-memory-utilization", "fraction of each GPU the engine may use (vLLM)",
        _fraction("--gpu-memory-utilization"), lambda e, v: {"gpu_memory_utilization": v}),
    "block_size": EngineOption("--block-size", "paged KV block size in tokens (vLLM)",
                               _int_in("--block-size", 1, 4096),
                               lambda e, v: {"kv_block_tokens": v}),
    "cuda_graphs": EngineOption("--cuda-graphs", "on, or off as with vLLM --enforce-eager",
                                _on_off("--cuda-graphs"), lambda e, v: {"cuda_graphs": v}),
}
"""Every engine option a planner flag can set; each profile lists the ones it has."""


def configure(eng: EngineProfile, values: dict[str, Any]) -> EngineProfile:
    """``eng`` with the options in ``values`` (OPTIONS keys to parsed values; None = the
    engine's default). An option the engine does not have is one InputError line."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        opt = OPTIONS[key]
        if key not in eng.options:
            have = [e.name for e in _PROFILES.values() if key in e.options]
            raise InputError(f"engine {eng.name} has no {opt.flag} (an option of "
                             f"{', '.join(have)})")
        changes.update(opt.apply(eng, value))
    return dataclasses.replace(eng, **changes) if changes else eng


def engine(name: str) -> EngineProfile:
    """The profile for an engine key, or InputError with suggestions."""
    return lookup(_PROFILES, name, "engine")


def engines() -> list[EngineProfile]:
    return list(_PROFILES.values())
