"""The precision registry: one shared vocabulary of weight and KV-cache formats.

The same key (say ``int4-g128``) names a format in the planner's byte arithmetic, in a plan file and
in the kernel the runtime calls. Every byte figure is an exact integer:

    payload = ceil(rows * cols * bits / 8)                    # int4: two per byte
    scales  = rows * ceil(cols / group) * scale_bytes         # per-channel: group = cols
    zeros   = ceil(rows * ceil(cols / group) * zero_bits / 8) # asymmetric formats only

``rows`` is a linear's output dimension and ``cols`` its input dimension (the dimension a group runs
along). NF4 quantizes the flattened tensor in blocks instead (see ``nf4``).

Which tensors a format applies to: linear weights (attention and MLP projections, expert FFNs, MLA
down/up projections). Embeddings, norms, biases and MoE routers stay in the activation dtype
(fp16/bf16), as GLM-130B does (seed ``000_…``: "excluding input/output embedding, layernorm and bias
terms"). Quantizing the LM head is an option of the memory model, off by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.errors import InputError, lookup, suggest

# Roles (see planner.spec) that a quantized weight format applies to.
QUANTIZED_ROLES = frozenset({"linear", "expert"})


@dataclass(frozen=True)
class WeightFormat:
    """A weight storage format and its exact byte formula."""

    key: str
    """Registry key used by the CLI, plan files and kernels."""
    bits: int
    """Payload bits per weight element."""
    granularity: str
    """Scale granularity: ``none`` (unquantized), ``tensor``, ``channel`` (one per output row),
    ``group`` (``group`` elements of a row along the input dim), ``block`` (flattened blocks, NF4)."""
    group: int = 0
    """Elements per scale for ``group`` and ``block`` granularity; 0 otherwise."""
    scale_bytes: int = 0
    """Bytes of one scale (fp16 = 2, fp32 = 4, NF4's first-level absmax = 1 after double quantization)."""
    zero_bits: int = 0
    """Bits of one zero point; 0 for symmetric formats. Zero points pack like the payload."""
    nested_block: int = 0
    """NF4 double quantization: first-level scales per second-level fp32 scale (256 in bitsandbytes)."""
    nested_scale_bytes: int = 0
    """Bytes of one second-level scale."""
    tensor_extra_bytes: int = 0
    """Fixed bytes per tensor (NF4's fp32 offset; absmax's one fp32 scale is counted as a scale)."""
    compute: str = "A16"
    """What the kernel computes in: A16 = fp16/bf16 activations; A32 for fp32."""
    lossless: bool = False
    """True for the unquantized formats."""
    min_compute_capability: tuple[int, int] = (0, 0)
    """Lowest CUDA compute capability that runs the format natively (fp8: sm89)."""
    quality_rank: int = 0
    """Order for the ``quality`` objective, lower is better: lossless first; then by published
    loss. GLM-130B (seed 000): INT8 matches FP16 (LAMBADA 80.206 both, WikiText-2 perplexity 10.904
    vs 10.901) while per-channel INT4 loses (79.468, 11.167); finer groups and zero points recover
    part of that (FineQuant, seed 001; GPTQ/AWQ group-wise results, seed 002); NF4 sits with the
    group-wise int4 formats; per-tensor absmax is the seed 002 counter-example and comes last."""
    description: str = ""
    """One line: what it is, with its source."""
    engines: tuple[str, ...] = ()
    """Engines limited to this format (empty = any); GGML block formats run only in llama.cpp."""

    @property
    def quantized(self) -> bool:
        return self.granularity != "none"

    def check_shape(self, rows: int, cols: int) -> str | None:
        """Why a (rows, cols) weight cannot be stored in this format, or None if it can."""
        if self.granularity == "group" and cols % self.group:
            return (f"{self.key} needs the input dimension to be a multiple of {self.group}, "
                    f"got {cols}")
        return None

    def tensor_bytes(self, rows: int, cols: int) -> int:
        """Exact bytes of a (rows, cols) weight in this format: payload + scales + zeros."""
        if rows < 0 or cols < 0:
            raise ValueError("negative shape")
        n = rows * cols
        payload = -(-n * self.bits // 8)
        if self.granularity == "none":
            return payload
        if self.granularity == "tensor":
            return payload + self.scale_bytes + self.tensor_extra_bytes
        if self.granularity == "block":
            blocks = -(-n // self.group)
            nested = -(-blocks // self.nested_block) if self.nested_block else 0
            return (payload + blocks * self.scale_bytes + nested * self.nested_scale_bytes
                    + self.tensor_extra_bytes)
        groups_per_row = 1 if self.granularity == "channel" else -(-cols // self.group)
        n_scales = rows * groups_per_row
        scales = n_scales * self.scale_bytes
        zeros = -(-n_scales * self.zero_bits // 8)
        return payload + scales + zeros

    def bytes_for_shape(self, shape: tuple[int, ...]) -> int:
        """Exact bytes of a tensor of any rank: 2-D (rows, cols); 1-D counts as one row; 3-D and up
        as rows = product of leading dims (a stack of matrices quantized row by row)."""
        if len(shape) == 0:
            return self.tensor_bytes(1, 1)
        cols = shape[-1]
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return self.tensor_bytes(rows, cols)


@dataclass(frozen=True)
class KVFormat:
    """A KV-cache storage format: bytes per cached token per KV head (K or V, one of them)."""

    key: str
    """Registry key (``--kv-cache``)."""
    bits: int
    """Bits per cached element."""
    scale_bytes: int
    """Bytes of the per-token-per-head scale (0 for fp16/bf16/fp8)."""
    lossless: bool
    """True for fp16/bf16."""
    min_compute_capability: tuple[int, int] = (0, 0)
    """Lowest compute capability that runs it natively."""
    description: str = ""
    """One line with its source."""
    block: int = 0
    """GGML block formats: values per block, each block one ``scale_bytes`` scale (the cache row
    is a run of whole blocks); 0 = one scale per vector."""

    def vector_bytes(self, dim: int) -> int:
        """Bytes of one cached vector of ``dim`` elements (one token, one head, K or V)."""
        if self.block:
            return -(-dim // self.block) * (self.block * self.bits // 8 + self.scale_bytes)
        return -(-dim * self.bits // 8) + self.scale_bytes


def _unquantized(key: str, bits: int, rank: int, desc: str) -> WeightFormat:
    return WeightFormat(key=key, bits=bits, granularity="none", lossless=True,
                        compute="A32" if bits == 32 else "A16", quality_rank=rank, description=desc)


def int4_group(group: int, zero_point: bool = False) -> WeightFormat:
    """``int4-gN`` (symmetric) or ``int4-gN-zp`` (asymmetric) with N elements per group."""
    if zero_point:
        return WeightFormat(
            key=f"int4-g{group}-zp", bits=4, granularity="group", group=group, scale_bytes=2,
            zero_bits=4, quality_rank=40 + (1 if group > 128 else 0),
            description=f"int4 group-wise asymmetric, group {group} along the input dim, fp16 scale "
                        "and 4-bit zero point per group, zeros packed two per byte (GPTQ/AWQ style; "
                        "Frantar et al. 2022, Lin et al. 2023)")
    return WeightFormat(
        key=f"int4-g{group}", bits=4, granularity="group", group=group, scale_bytes=2,
        quality_rank=42 + (1 if group > 128 else 0),
        description=f"int4 group-wise symmetric absmax, group {group} along the input dim, fp16 "
                    "scale per group, two per byte (FineQuant, seed 001)")


_FORMATS: dict[str, WeightFormat] = {f.key: f for f in [
    _unquantized("fp32", 32, 0, "IEEE float32"),
    _unquantized("fp16", 16, 1, "IEEE float16"),
    _unquantized("bf16", 16, 1, "bfloat16"),
    WeightFormat(key="fp8", bits=8, granularity="channel", scale_bytes=4,
                 min_compute_capability=(8, 9), quality_rank=10,
                 description="fp8 e4m3 weights with an fp32 scale per output channel "
                             "(vLLM's per-channel fp8; tensor cores need sm89+)"),
    WeightFormat(key="int8", bits=8, granularity="channel", scale_bytes=2, quality_rank=20,
                 description="int8 vector-wise symmetric absmax, fp16 scale per output channel, "
                             "W8A16 (GLM-130B, seed 000)"),
    WeightFormat(key="llm-int8", bits=8, granularity="channel", scale_bytes=4, quality_rank=21,
                 description="LLM.int8(): int8 weights with fp32 per-row scales; outlier feature "
                             "columns (|x| > 6) in fp16 at run time (Dettmers et al. 2022, seed 001)"),
    int4_group(128, zero_point=True),
    int4_group(128),
    WeightFormat(key="nf4", bits=4, granularity="block", group=64, scale_bytes=1,
                 nested_block=256, nested_scale_bytes=4, tensor_extra_bytes=4, quality_rank=44,
                 description="bitsandbytes NF4, flattened blocks of 64, double-quantized scales: "
                             "uint8 absmax per block, fp32 per 256 blocks, one fp32 offset "
                             "(Dettmers et al. 2023, seed 002)"),
    WeightFormat(key="int4", bits=4, granularity="channel", scale_bytes=2, quality_rank=50,
                 description="int4 vector-wise symmetric absmax, fp16 scale per output channel, "
                             "two per byte (GLM-130B INT4, seed 000)"),
    WeightFormat(key="absmax", bits=8, granularity="tensor", scale_bytes=4, quality_rank=60,
                 description="naive per-tensor int8 absmax, one fp32 scale per tensor (the seed "
                             "002 first example; for comparison)"),
]}

def _ggml(key: str, bits: int, block: int, scale_bytes: int, zero_bits: int, rank: int,
          layout: str) -> WeightFormat:
    return WeightFormat(key=key, bits=bits, granularity="group", group=block,
                        scale_bytes=scale_bytes, zero_bits=zero_bits, quality_rank=rank,
                        engines=("llama.cpp",),
                        description=f"GGML {key.upper()}: {layout} (llama.cpp ggml-common.h block "
                                    "layout; llama.cpp only)")


# GGML block formats: bytes per block = payload + the block's scales, exactly as ggml stores them
# (q8_0 34 B/32, q4_0 18 B/32, q4_1 20 B/32, q5_0 22 B/32, q5_1 24 B/32, q2_k 84 B/256,
# q3_k 110 B/256, q4_k 144 B/256, q5_k 176 B/256, q6_k 210 B/256).
for _f in [
    _ggml("q8_0", 8, 32, 2, 0, 22, "32 int8 + fp16 scale per block"),
    _ggml("q6_k", 6, 256, 18, 0, 30, "256 6-bit + 16 int8 sub-scales + fp16 scale"),
    _ggml("q5_1", 5, 32, 2, 16, 34, "32 5-bit + fp16 scale + fp16 min"),
    _ggml("q5_0", 5, 32, 2, 0, 35, "32 5-bit + fp16 scale"),
    _ggml("q5_k", 5, 256, 16, 0, 36, "256 5-bit + 12 B 6-bit sub-scales/mins + fp16 d, dmin"),
    _ggml("q4_k", 4, 256, 16, 0, 45, "256 4-bit + 12 B 6-bit sub-scales/mins + fp16 d, dmin"),
    _ggml("q4_1", 4, 32, 2, 16, 46, "32 4-bit + fp16 scale + fp16 min"),
    _ggml("q4_0", 4, 32, 2, 0, 47, "32 4-bit + fp16 scale"),
    _ggml("q3_k", 3, 256, 14, 0, 70, "256 3-bit + 12 B sub-scales + fp16 d"),
    _ggml("q2_k", 2, 256, 20, 0, 80, "256 2-bit + 16 B sub-scales/mins + fp16 d, dmin"),
]:
    _FORMATS[_f.key] = _f

_GROUP_KEY = re.compile(r"^int4-g([1-9][0-9]*)(-zp)?$")

_KV_FORMATS: dict[str, KVFormat] = {f.key: f for f in [
    KVFormat("fp16", 16, 0, True, description="IEEE float16"),
    KVFormat("bf16", 16, 0, True, description="bfloat16"),
    KVFormat("fp32", 32, 0, True,
             description="IEEE float32 (transformers' DynamicCache of a model loaded in fp32: "
                         "the cache takes the model's dtype)"),
    KVFormat("fp8", 8, 0, False, (8, 9),
             description="fp8 e4m3 with a unit scale (vLLM --kv-cache-dtype fp8 without "
                         "calibrated scales)"),
    KVFormat("int8", 8, 2, False,
             description="int8 symmetric with an fp16 scale per token per head"),
    KVFormat("int4", 4, 2, False,
             description="int4 symmetric, two per byte, fp16 scale per token per head"),
    # llama.cpp --cache-type-k/-v: ggml-common.h block_q8_0 {fp16 d; int8 qs[32]} = 34 bytes and
    # block_q4_0 {fp16 d; uint8 qs[16]} = 18 bytes per 32 values (llama.cpp 0c1e570).
    KVFormat("q8_0", 8, 2, False, block=32,
             description="GGML Q8_0 cache (llama.cpp -ctk/-ctv q8_0): 32 int8 + fp16 scale per "
                         "block, 34 bytes per 32 values"),
    KVFormat("q4_0", 4, 2, False, block=32,
             description="GGML Q4_0 cache (llama.cpp -ctk/-ctv q4_0): 32 4-bit + fp16 scale per "
                         "block, 18 bytes per 32 values"),
]}


def weight_format(key: str) -> WeightFormat:
    """Look up a weight format by key; ``int4-gN`` and ``int4-gN-zp`` accept any group size N."""
    if not isinstance(key, str):
        raise InputError(f"weight format must be a string, got {key!r}")
    k = key.strip().lower()
    if k in _FORMATS:
        return _FORMATS[k]
    m = _GROUP_KEY.match(k)
    if m:
        group = int(m.group(1))
        if group > 1 << 20:
            raise InputError(f"weight format {key!r}: group size {group} is too large")
        return int4_group(group, zero_point=bool(m.group(2)))
    raise InputError(f"unknown weight format {key!r}{suggest(k, list(_FORMATS))}; "
                     f"known: {', '.join(_FORMATS)} (and int4-gN, int4-gN-zp for any group N)")


def kv_format(key: str) -> KVFormat:
    """Look up a KV-cache format by key."""
    return lookup(_KV_FORMATS, key, "KV-cache format")


def weight_formats() -> list[WeightFormat]:
    """Every registered weight format (int4 group formats at their default group 128)."""
    return list(_FORMATS.values())


def kv_formats() -> list[KVFormat]:
    """Every registered KV-cache format."""
    return list(_KV_FORMATS.values())
