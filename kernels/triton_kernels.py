"""Triton kernels: fused weight-only matmul y = x @ dequant(Wq)^T (+ bias), and LLM.int8().

Imported lazily by ``kernels.api`` (``import kernels`` does not import Triton). Under
``TRITON_INTERPRET=1`` (set before this module is imported) the same kernels run on CPU tensors in
Triton's interpreter, with a single config per kernel (the interpreter cannot autotune).

Weight-only kernels (formats ``int8``, ``int4``, ``int4-gN``, ``int4-gN-zp``; layouts in
``kernels.packed``):

* ``_wo_gemv_kernel`` (decode, M <= 16): grid (cdiv(N, BLOCK_N), SPLIT_K). Each program owns
  BLOCK_N output channels, all M rows, and one K slice; partial sums go to a zero-initialised fp32
  [M, N] buffer with ``tl.atomic_add``; the wrapper adds the bias and casts. For M <= 4 the product is
  a broadcast multiply + ``tl.sum`` (no tensor cores: nothing to fill them with); for 4 < M <= 16 it
  is ``tl.dot`` with BLOCK_M = 16.
* ``_wo_gemm_kernel`` (prefill, M > 16): grid over [M/BLOCK_M x N/BLOCK_N] tiles with grouped
  ordering for L2 reuse of x; full K loop, ``tl.dot`` in fp16/bf16 with fp32 accumulation; bias and
  the cast fused into the epilogue.

Both share ``_wo_tile``: it loads one [BLOCK_N, BLOCK_K] weight tile, unpacks int4 (for even K a
[BLOCK_N, BLOCK_K/2] byte tile split into low/high nibbles and interleaved with ``tl.join``; for odd
K a per-element gather of byte i//2 and shift 4*(i%2)), subtracts 8 or the group's zero point, and
applies group scales. When the group size is a multiple of BLOCK_K the tile shares one scale per
row, so the scale multiplies the [M, N] partial product instead of every weight element; per-channel
scales are applied once in the epilogue. Integer weights (|q| <= 127) are exact in fp16 and bf16, so
``tl.dot`` on them loses nothing.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Format codes (constexpr FMT)
FMT_INT8 = 0      # int8 [N, K], fp16 scale [N]
FMT_INT4 = 1      # nibbles, stored q + 8, scale [N] (per channel) or [N, G] (group)
FMT_INT4_ZP = 2   # nibbles, scale [N, G], zero nibbles [ceil(N*G/2)]


def _gemv_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 2}, num_warps=4)]
    cfgs = []
    for bn, bk, sk, w in [(64, 32, 4, 4), (128, 32, 2, 4), (64, 64, 1, 4), (64, 128, 2, 4),
                          (128, 64, 2, 4), (64, 64, 4, 4),
                          (32, 128, 4, 2), (128, 128, 4, 8), (64, 128, 8, 4), (32, 64, 8, 2),
                          (128, 64, 8, 4), (64, 256, 4, 4), (256, 64, 2, 8), (16, 128, 16, 2)]:
        cfgs.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk},
                                  num_warps=w, num_stages=3))
    return cfgs


def _gemm_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4},
                              num_warps=4)]
    cfgs = []
    for bm, bn, bk, w, s in [(16, 64, 64, 4, 4), (32, 64, 64, 4, 4), (32, 128, 64, 4, 4),
                             (64, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                             (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (64, 256, 32, 8, 3),
                             (128, 256, 64, 8, 3)]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=w, num_stages=s))
    return cfgs


def _prune(configs, named_args, **kwargs):
    """Keep configs whose split-K slices all get work and, for int4 groups, whose BLOCK_K divides
    the group (one scale per tile row; the per-element scale path stays correct for the rest)."""
    args = {**named_args, **kwargs}  # constexprs passed by keyword arrive in kwargs
    group, k = args.get("GROUP", 0), args["K"]
    fits = [c for c in configs
            if c.kwargs.get("SPLIT_K", 1) * c.kwargs["BLOCK_K"] <= max(k, c.kwargs["BLOCK_K"])]
    fits = fits or configs[:1]
    if group:
        aligned = [c for c in fits if group % c.kwargs["BLOCK_K"] == 0]
        fits = aligned or fits
    return fits


@triton.jit
def _wo_tile(w_ptr, s_ptr, z_ptr, offs_n, offs_k, k0, mask_n, mask_k, K, G,
             FMT: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """One [BLOCK_N, BLOCK_K] weight tile, zero point removed; group scales applied here only when
    a group is smaller than (or not aligned with) the tile. Returns values in OUT_DTYPE."""
    n64 = offs_n.to(tl.int64)
    mask = mask_n[:, None] & mask_k[None, :]
    if FMT == 0:
        q = tl.load(w_ptr + n64[:, None] * K + offs_k[None, :], mask=mask, other=0,
                    eviction_policy="evict_first").to(tl.float32)
    else:
        if EVEN_K:
            offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            mask_b = mask_n[:, None] & (offs_b[None, :] < K // 2)
            b = tl.load(w_ptr + n64[:, None] * (K // 2) + offs_b[None, :], mask=mask_b, other=0,
                        eviction_policy="evict_first")
            lo = b & 0xF
            hi = b >> 4
            u = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
        else:
            e = n64[:, None] * K + offs_k[None, :]
            b = tl.load(w_ptr + (e >> 1), mask=mask, other=0, eviction_policy="evict_first")
            u = (b.to(tl.int32) >> ((e & 1) * 4).to(tl.int32)) & 0xF
        u = u.to(tl.float32)
        if FMT == 2:
            if GROUP % BLOCK_K == 0:
                ze = n64 * G + k0 // GROUP
                zb = tl.load(z_ptr + (ze >> 1), mask=mask_n, other=0)
                z = (zb.to(tl.int32) >> ((ze & 1) * 4).to(tl.int32)) & 0xF
                q = u - z.to(tl.float32)[:, None]
            else:
                ze = n64[:, None] * G + (offs_k // GROUP)[None, :]
                zb = tl.load(z_ptr + (ze >> 1), mask=mask, other=0)
                z = (zb.to(tl.int32) >> ((ze & 1) * 4).to(tl.int32)) & 0xF
                q = u - z.to(tl.float32)
        else:
            q = u - 8.0
    if GROUP > 0:
        if GROUP % BLOCK_K != 0:
            s = tl.load(s_ptr + n64[:, None] * G + (offs_k // GROUP)[None, :], mask=mask,
                        other=0).to(tl.float32)
            q = q * s
    return q.to(OUT_DTYPE)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; UPCAST runs it on fp32 operands (only under the interpreter,
    whose bf16 tl.dot returns garbage in Triton 3.9: raw bf16 bits are read as integers)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b)


@triton.jit
def _tile_scale(s_ptr, offs_n, mask_n, k0, G, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-row scale of a tile whose K range sits inside one group: fp32 [BLOCK_N]."""
    return tl.load(s_ptr + offs_n.to(tl.int64) * G + k0 // GROUP, mask=mask_n,
                   other=0).to(tl.float32)


@triton.autotune(configs=_gemv_configs(), key=["M_BUCKET", "N", "K", "FMT", "GROUP"],
                 prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["out_ptr"])
@triton.jit
def _wo_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, K, G, M_BUCKET,
                    FMT: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, USE_DOT: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    x_dtype = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_end
        x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0, eviction_policy="evict_last")
        if USE_DOT:
            w = _wo_tile(w_ptr, s_ptr, z_ptr, offs_n, offs_k, k0, mask_n, mask_k, K, G,
                         FMT, GROUP, EVEN_K, BLOCK_N, BLOCK_K, x_dtype)
            part = _dot(x, tl.trans(w), UPCAST)
        else:
            w = _wo_tile(w_ptr, s_ptr, z_ptr, offs_n, offs_k, k0, mask_n, mask_k, K, G,
                         FMT, GROUP, EVEN_K, BLOCK_N, BLOCK_K, tl.float32)
            part = tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)
        if GROUP > 0:
            if GROUP % BLOCK_K == 0:
                part = part * _tile_scale(s_ptr, offs_n, mask_n, k0, G, GROUP, BLOCK_K)[None, :]
        acc += part
    if GROUP == 0:
        acc = acc * tl.load(s_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
    tl.atomic_add(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc,
                  mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N", "K", "FMT", "GROUP"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _wo_gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, G, M_BUCKET,
                    FMT: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr,
                    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_dtype = x_ptr.dtype.element_ty
    m64 = offs_m.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + m64[:, None] * K + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = _wo_tile(w_ptr, s_ptr, z_ptr, offs_n, offs_k, k0, mask_n, mask_k, K, G,
                     FMT, GROUP, EVEN_K, BLOCK_N, BLOCK_K, x_dtype)
        part = _dot(x, tl.trans(w), UPCAST)
        if GROUP > 0:
            if GROUP % BLOCK_K == 0:
                part = part * _tile_scale(s_ptr, offs_n, mask_n, k0, G, GROUP, BLOCK_K)[None, :]
        acc += part
    if GROUP == 0:
        acc = acc * tl.load(s_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
    tl.store(out_ptr + m64[:, None] * N + offs_n[None, :], acc.to(x_dtype),
             mask=mask_m[:, None] & mask_n[None, :])


GEMV_MAX_M = 16
"""Largest batch (rows of x) that takes the split-K GEMV path; larger batches take the GEMM."""


def _upcast(x: torch.Tensor) -> bool:
    return INTERPRET and x.dtype == torch.bfloat16


def _m_bucket(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length())


def weight_only_matmul(x: torch.Tensor, packed, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] fp16/bf16 contiguous; packed int8/int4/int4-gN/int4-gN-zp on x's device."""
    fmt = packed.format
    n, k = packed.shape
    m = x.shape[0]
    b = packed.buffers
    if fmt.kind == "int8":
        code, group = FMT_INT8, 0
    else:
        code, group = (FMT_INT4_ZP if fmt.zero_point else FMT_INT4), fmt.group
    g = k // group if group else 1
    w, s = b["qweight"], b["scale"]
    z = b.get("zero", s)  # any valid pointer when unused
    even_k = k % 2 == 0
    if m <= GEMV_MAX_M:
        block_m = _m_bucket(m) if m <= 4 else 16
        out = torch.zeros((m, n), device=x.device, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])  # noqa: E731
        _wo_gemv_kernel[grid](x, w, s, z, out, m, n, k, g, _m_bucket(m),
                              FMT=code, GROUP=group, EVEN_K=even_k,
                              BLOCK_M=block_m, USE_DOT=m > 4, UPCAST=_upcast(x))
        if bias is not None:
            out += bias.float()
        return out.to(x.dtype)
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _wo_gemm_kernel[grid](x, w, s, z, bias if bias is not None else out, out, m, n, k, g,
                          min(_m_bucket(m), 256), FMT=code, GROUP=group, EVEN_K=even_k,
                          HAS_BIAS=bias is not None, UPCAST=_upcast(x))
    return out


# ---------------------------------------------------------------------------------------------
# LLM.int8(): int8 x int8 with vector-wise scales + fp16 outlier columns, one kernel.

def _int8_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_O": 16},
                              num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_O": 16},
                          num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(16, 64, 64, 4, 4), (32, 64, 128, 4, 4), (64, 128, 64, 4, 4),
                                     (128, 128, 64, 8, 3), (128, 256, 64, 8, 3)]]


@triton.autotune(configs=_int8_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _llm_int8_kernel(xq_ptr, sx_ptr, x_ptr, w_ptr, sw_ptr, idx_ptr, b_ptr, out_ptr,
                     M, N, K, n_out, M_BUCKET, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_O: tl.constexpr):
    """out = (xq @ wq^T) * sx[m] * sw[n] + (x[:, idx] @ wq[:, idx]^T) * sw[n] (+ bias).

    xq int8 [M, K] (outlier columns zeroed), sx fp32 [M] (row absmax / 127), x fp16/bf16 [M, K],
    wq int8 [N, K], sw fp32 [N], idx int32 [n_out] outlier column indices.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    m64 = offs_m.to(tl.int64)
    n64 = offs_n.to(tl.int64)
    acc_i = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(xq_ptr + m64[:, None] * K + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0)
        b = tl.load(w_ptr + n64[:, None] * K + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0)
        acc_i += tl.dot(a, tl.trans(b))
    sx = tl.load(sx_ptr + offs_m, mask=mask_m, other=0.0)
    sw = tl.load(sw_ptr + offs_n, mask=mask_n, other=0.0)
    acc = acc_i.to(tl.float32) * sx[:, None]
    x_dtype = x_ptr.dtype.element_ty
    acc_o = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for o0 in range(0, n_out, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        mask_o = offs_o < n_out
        cols = tl.load(idx_ptr + offs_o, mask=mask_o, other=0).to(tl.int64)
        xo = tl.load(x_ptr + m64[:, None] * K + cols[None, :],
                     mask=mask_m[:, None] & mask_o[None, :], other=0.0)
        wo = tl.load(w_ptr + n64[:, None] * K + cols[None, :],
                     mask=mask_n[:, None] & mask_o[None, :], other=0)
        acc_o += _dot(xo, tl.trans(wo.to(tl.float32).to(x_dtype)), UPCAST)
    acc = (acc + acc_o) * sw[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
    tl.store(out_ptr + m64[:, None] * N + offs_n[None, :], acc.to(x_dtype),
             mask=mask_m[:, None] & mask_n[None, :])


def llm_int8_matmul(x: torch.Tensor, xq: torch.Tensor, sx: torch.Tensor, idx: torch.Tensor,
                    packed, bias: torch.Tensor | None) -> torch.Tensor:
    """Launch ``_llm_int8_kernel``; the row quantization of x and the outlier index list are
    prepared by ``kernels.api`` (shared with the reference)."""
    n, k = packed.shape
    m = x.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _llm_int8_kernel[grid](xq, sx, x, packed["qweight"], packed["scale"], idx,
                           bias if bias is not None else out, out, m, n, k, idx.numel(),
                           min(_m_bucket(m), 256), HAS_BIAS=bias is not None,
                           UPCAST=_upcast(x))
    return out
