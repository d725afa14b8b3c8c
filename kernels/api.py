"""The runtime-facing API: ``quantize``, ``matmul``, ``llm_int8_matmul``, ``kernel_for``.

Dispatch (``backend="auto"``), by the device of x and the format:

==========================  =============================================  =========================
format                      CUDA                                           CPU
==========================  =============================================  =========================
int8                        triton-gemv-int8 (M<=16) / triton-gemm-int8     torch-int8pack-cpu
int4, int4-gN, int4-gN-zp   triton-gemv-int4[g|gzp] / triton-gemm-...       reference (see below)
llm-int8                    triton-llm-int8                                 reference-llm-int8
fp8, nf4, absmax            torch-dequant-mm (dequantize to x's dtype,      reference
                            then cuBLAS; the [N, K] copy is transient)
fp32, fp16, bf16            torch-linear                                    torch-linear
==========================  =============================================  =========================

fp32 activations take ``reference`` for quantized formats (the Triton kernels are A16).

CPU int4: ``torch._weight_int4pack_mm_for_cpu`` wants its own weight packing (blocks of 64 rows,
N a multiple of 16, group 32/64/128/256) and bf16/fp16 ``[K/g, N, 2]`` scales-and-zeros: twice the
bytes of the canonical fp16 scales. Holding that instead would break ``nbytes == registry``, and
repacking per call costs as much as dequantizing, so int4 formats on CPU use the reference.

``backend="triton"`` forces the Triton kernels (on CPU only under ``TRITON_INTERPRET=1``, which is
how the tests run them); ``"reference"`` forces the fp32 reference; ``"torch"`` the torch paths.
"""

from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F

from kernels.formats import parse_key
from kernels.packed import PackedWeight
from kernels.quant import dequantize
from kernels.quant import quantize as _quantize
from kernels.reference import llm_int8_split, reference_llm_int8, reference_matmul

BACKENDS = ("auto", "triton", "torch", "reference")
LLM_INT8_THRESHOLD = 6.0
"""LLM.int8()'s default outlier threshold on |x| (Dettmers et al. 2022)."""
GEMV_MAX_M = 16
"""Largest batch that takes the split-K GEMV kernels (kept equal to triton_kernels.GEMV_MAX_M)."""

_local = threading.local()


def quantize(weight: torch.Tensor, key: str) -> PackedWeight:
    """Quantize a [N, K] weight into registry format ``key`` (see ``kernels.packed`` for layouts).

    ``nbytes`` of the result equals ``planner.precision.weight_format(key).tensor_bytes(N, K)``.
    """
    return _quantize(weight, key)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_name(packed: PackedWeight, m: int) -> str:
    f = packed.format
    if f.kind == "int8":
        suffix = "int8"
    elif f.zero_point:
        suffix = "int4gzp"
    elif f.group:
        suffix = "int4g"
    else:
        suffix = "int4"
    return f"triton-{'gemv' if m <= GEMV_MAX_M else 'gemm'}-{suffix}"


def _triton_ok(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16) and (x.is_cuda or _interpreting())


def kernel_for(x: torch.Tensor, packed: PackedWeight, backend: str = "auto") -> str:
    """The name of the kernel ``matmul(x, packed, backend=backend)`` runs (no computation).

    Raises ValueError when ``backend`` cannot run this input (e.g. ``triton`` on CPU without the
    interpreter, or for a format with no Triton kernel)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    kind = packed.format.kind
    m = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    if backend == "reference":
        return "reference-llm-int8" if kind == "llm-int8" else "reference"
    if kind == "float":
        return "torch-linear"
    fused = kind in ("int8", "int4")
    if backend == "triton":
        if not (fused or kind == "llm-int8"):
            raise ValueError(f"no Triton kernel for {packed.key}; Triton covers int8, int4, "
                             "int4-gN, int4-gN-zp and llm-int8")
        if not _triton_ok(x):
            raise ValueError("the Triton kernels need fp16/bf16 x on CUDA (or on CPU with "
                             "TRITON_INTERPRET=1 set before kernels is imported)")
        return "triton-llm-int8" if kind == "llm-int8" else _triton_name(packed, m)
    if x.is_cuda:
        if kind == "llm-int8":
            return "triton-llm-int8" if backend == "auto" and _triton_ok(x) else "reference-llm-int8"
        if backend == "auto" and fused and _triton_ok(x):
            return _triton_name(packed, m)
        return "torch-dequant-mm" if x.dtype != torch.float32 else "reference"
    if kind == "int8":
        return "torch-int8pack-cpu"
    return "reference-llm-int8" if kind == "llm-int8" else "reference"


def last_kernel() -> str | None:
    """The kernel the most recent ``matmul`` / ``llm_int8_matmul`` on this thread ran."""
    return getattr(_local, "last", None)


def _check(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> None:
    if not isinstance(packed, PackedWeight):
        raise ValueError(f"packed must be a kernels.PackedWeight, got {type(packed).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    n, k = packed.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x's last dimension must equal the weight's in_features K={k}, got x "
                         f"shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x dtype must be float16, bfloat16 or float32, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous (row-major [..., K]); call .contiguous() first")
    if x.device != packed.device:
        raise ValueError(f"x is on {x.device} but the weight is on {packed.device}; "
                         "move it with packed.to(device)")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,):
            raise ValueError(f"bias must be a tensor of shape [{n}] (out_features), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else bias!r}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
        if not bias.is_floating_point():
            raise ValueError(f"bias must be floating point, got {bias.dtype}")


def matmul(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
           backend: str = "auto") -> torch.Tensor:
    """y = x @ dequant(packed)^T (+ bias); x [..., K] fp16/bf16 (fp32 takes the reference),
    y [..., N] in x's dtype. Accumulates in fp32. ``llm-int8`` weights run LLM.int8() with the
    default threshold (see ``llm_int8_matmul``)."""
    _check(x, packed, bias)
    if packed.format.kind == "llm-int8":
        return llm_int8_matmul(x, packed, bias, backend=backend)
    name = kernel_for(x, packed, backend)
    n, k = packed.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 0:
        y = x2.new_zeros((0, n))
    elif name.startswith("triton-"):
        from kernels import triton_kernels
        y = triton_kernels.weight_only_matmul(x2, packed, bias)
    elif name == "torch-int8pack-cpu":
        y = torch._weight_int8pack_mm(x2, packed["qweight"], packed["scale"].to(x.dtype))
        if bias is not None:
            y = y + bias.to(x.dtype)
    elif name == "torch-linear":
        w = packed["weight"]
        y = F.linear(x2, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
    elif name == "torch-dequant-mm":
        y = F.linear(x2, dequantize(packed, x.dtype), None if bias is None else bias.to(x.dtype))
    else:
        y = reference_matmul(x2, packed, bias)
    _local.last = name
    return y.reshape(*lead, n)


def llm_int8_matmul(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
                    threshold: float = LLM_INT8_THRESHOLD, backend: str = "auto") -> torch.Tensor:
    """LLM.int8(): columns of x holding any |x| > ``threshold`` multiply the matching weight columns
    in fp16/bf16; the rest run int8 x int8 with vector-wise scales (row absmax of x, the weight's
    per-output-channel scale). ``packed`` must be ``llm-int8``."""
    _check(x, packed, bias)
    if packed.format.kind != "llm-int8":
        raise ValueError(f"llm_int8_matmul needs an llm-int8 weight, got {packed.key}")
    if not (threshold > 0):
        raise ValueError(f"threshold must be positive, got {threshold}")
    name = kernel_for(x, packed, backend)
    n, k = packed.shape
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 0:
        y = x2.new_zeros((0, n))
    elif name == "triton-llm-int8":
        from kernels import triton_kernels
        xq, sx, idx = llm_int8_split(x2, threshold)
        y = triton_kernels.llm_int8_matmul(x2, xq, sx, idx, packed, bias)
    else:
        y = reference_llm_int8(x2, packed, bias, threshold)
    _local.last = name
    return y.reshape(*x.shape[:-1], n)


def is_known_key(key: str) -> bool:
    """True if ``key`` is a registry weight-format key the kernels can run."""
    try:
        parse_key(key)
    except ValueError:
        return False
    return True
