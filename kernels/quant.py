"""Quantizers and dequantizers (pure torch, any device). Layouts: see ``kernels.packed``.

All quantization math runs in fp32 on the weight's device; scales are rounded to their stored dtype
*before* the weight is divided by them, so the round-to-nearest bound |W - dq(q(W))| <= scale / 2
holds against the scale actually stored.
"""

from __future__ import annotations

import torch

from kernels.formats import NF4_BLOCK, NF4_NESTED_BLOCK, Format, parse_key
from kernels.packed import PackedWeight

NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)
"""The 16 NormalFloat-4 levels (QLoRA, Dettmers et al. 2023; the values bitsandbytes uses)."""


def _dynamic_code() -> torch.Tensor:
    """The signed 8-bit dynamic ("dynamic tree") code used for NF4's double quantization.

    Built from its definition (Dettmers 2016 / 8-bit optimizers): for each exponent e = 0..6 the
    interval [0.1, 1] is split into 2**e equal bins whose midpoints, times 10**(e - 6), are code
    values, with both signs; plus 0 and 1. 2 * 127 + 2 = 256 sorted values in [-0.993, 1].
    """
    vals = [0.0, 1.0]
    for e in range(7):
        b = torch.linspace(0.1, 1.0, 2 ** e + 1, dtype=torch.float64)
        mid = (b[:-1] + b[1:]) / 2 * 10.0 ** (e - 6)
        vals += mid.tolist() + (-mid).tolist()
    return torch.tensor(sorted(vals), dtype=torch.float32)


DYNAMIC_CODE = _dynamic_code()
"""256 sorted fp32 values; ``absmax_q`` indexes into it."""

FP16_TINY = 2.0 ** -24
"""Smallest positive fp16 (subnormal): the floor for stored fp16 scales."""
FP8_MAX = 448.0
"""Largest finite float8_e4m3fn."""

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _nearest(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of a sorted ``code`` for each value (ties toward the lower)."""
    mid = (code[1:] + code[:-1]) / 2
    return torch.bucketize(values, mid.to(values.device), right=False)


def pack_nibbles(u: torch.Tensor, high_first: bool = False) -> torch.Tensor:
    """Pack values 0..15 (any shape, flattened row-major) two per byte: uint8 [ceil(n/2)].

    Element i goes to byte i // 2; the low nibble for even i unless ``high_first`` (NF4's order).
    """
    flat = u.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    a, b = flat[0::2], flat[1::2]
    return ((a << 4) | b) if high_first else (a | (b << 4))


def unpack_nibbles(p: torch.Tensor, n: int, high_first: bool = False) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: uint8 [n] with values 0..15."""
    lo, hi = p & 0xF, p >> 4
    pair = torch.stack([hi, lo] if high_first else [lo, hi], dim=-1)
    return pair.reshape(-1)[:n]


def _check_weight(weight: torch.Tensor, fmt: Format) -> None:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K] (out_features, in_features), got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"weight dtype must be float32, float16 or bfloat16, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (row-major [N, K]); call .contiguous() first")
    fmt.check_shape(*weight.shape)
    if not bool(torch.isfinite(weight).all()):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"weight has {bad} NaN/inf value(s); only finite weights can be quantized")


def _fp16_scale(absmax: torch.Tensor, qmax: float, what: str) -> torch.Tensor:
    """absmax / qmax rounded to fp16 (1 where absmax == 0), floored at the smallest fp16."""
    s = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    if bool((s > 65504.0).any()):
        raise ValueError(f"{what}: |weight| up to {float(absmax.max()):.4g} needs a scale beyond "
                         "the fp16 range (65504); use an fp32-scale format (llm-int8, fp8, absmax)")
    return s.to(torch.float16).clamp_min(FP16_TINY)


def _q_symmetric(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale), -qmax, qmax)


def quantize_int8_channel(w: torch.Tensor, fp32_scale: bool = False) -> dict[str, torch.Tensor]:
    """Vector-wise (per output channel) symmetric absmax int8: ``int8`` / ``llm-int8`` buffers."""
    w = w.float()
    absmax = w.abs().amax(dim=1)
    if fp32_scale:
        s = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    else:
        s = _fp16_scale(absmax, 127, "int8")
    q = _q_symmetric(w, s.float()[:, None], 127).to(torch.int8)
    return {"qweight": q.contiguous(), "scale": s.contiguous()}


def quantize_absmax_tensor(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Naive per-tensor symmetric absmax int8 with one fp32 scale (seed 002's first example)."""
    w = w.float()
    absmax = w.abs().amax()
    s = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)).reshape(())
    return {"qweight": _q_symmetric(w, s, 127).to(torch.int8).contiguous(), "scale": s.clone()}


def quantize_fp8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """fp8 e4m3 with an fp32 scale per output channel (absmax maps to 448)."""
    w = w.float()
    absmax = w.abs().amax(dim=1)
    s = torch.where(absmax > 0, absmax / FP8_MAX, torch.ones_like(absmax))
    q = (w / s[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"qweight": q.contiguous(), "scale": s.contiguous()}


def quantize_int4(w: torch.Tensor, group: int = 0, zero_point: bool = False
                  ) -> dict[str, torch.Tensor]:
    """int4, per-channel (``group=0``) or group-wise along K, symmetric or asymmetric.

    Symmetric: scale = absmax / 7, q = clamp(round(W / scale), -7, 7), stored as q + 8.
    Asymmetric (GPTQ/AWQ style): the group's [min, max] widened to include 0, scale = (max - min)/15,
    zero = clamp(round(-min / scale), 0, 15), u = clamp(round(W / scale) + zero, 0, 15).
    """
    w = w.float()
    n, k = w.shape
    g = group or k
    wg = w.reshape(n, k // g, g)
    if zero_point:
        lo = wg.amin(dim=2).clamp_max(0.0)
        hi = wg.amax(dim=2).clamp_min(0.0)
        s = _fp16_scale(hi - lo, 15, f"int4-g{g}-zp")
        sf = s.float()
        z = torch.clamp(torch.round(-lo / sf), 0, 15)
        u = torch.clamp(torch.round(wg / sf[..., None]) + z[..., None], 0, 15)
        return {"qweight": pack_nibbles(u), "scale": s.contiguous(), "zero": pack_nibbles(z)}
    s = _fp16_scale(wg.abs().amax(dim=2), 7, "int4")
    q = _q_symmetric(wg, s.float()[..., None], 7) + 8
    scale = s.reshape(n) if not group else s.contiguous()
    return {"qweight": pack_nibbles(q), "scale": scale.contiguous()}


def quantize_nf4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """bitsandbytes NF4: flattened blocks of 64, nearest NF4 level of W / absmax(block), then double
    quantization of the block absmax values (offset = their mean; blocks of 256 in the 8-bit dynamic
    code with an fp32 absmax per 256)."""
    flat = w.float().reshape(-1)
    e = flat.numel()
    nb = -(-e // NF4_BLOCK)
    blocks = torch.nn.functional.pad(flat, (0, nb * NF4_BLOCK - e)).reshape(nb, NF4_BLOCK)
    absmax = blocks.abs().amax(dim=1)
    norm = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    idx = _nearest(norm, NF4_CODE.to(w.device)).reshape(-1)[:e]
    offset = absmax.mean()
    c = absmax - offset
    nb2 = -(-nb // NF4_NESTED_BLOCK)
    c2 = torch.nn.functional.pad(c, (0, nb2 * NF4_NESTED_BLOCK - nb)).reshape(nb2, -1)
    a2 = c2.abs().amax(dim=1)
    a2 = torch.where(a2 > 0, a2, torch.ones_like(a2))
    idx2 = _nearest(c2 / a2[:, None], DYNAMIC_CODE.to(w.device)).reshape(-1)[:nb]
    return {"qweight": pack_nibbles(idx, high_first=True),
            "absmax_q": idx2.to(torch.uint8).contiguous(),
            "absmax_scale": a2.contiguous(),
            "absmax_offset": offset.reshape(()).clone()}


def quantize(weight: torch.Tensor, key: str) -> PackedWeight:
    """Quantize a [N, K] weight (fp32/fp16/bf16, contiguous, finite) into registry format ``key``.

    Raises ValueError naming the constraint for a bad key, shape, dtype, layout or value.
    """
    fmt = parse_key(key)
    _check_weight(weight, fmt)
    n, k = weight.shape
    with torch.no_grad():
        if fmt.kind == "float":
            dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[fmt.key]
            if dt == torch.float16 and bool((weight.abs() > 65504).any()):
                raise ValueError("fp16: weight values exceed the fp16 range (65504)")
            bufs = {"weight": weight.to(dt).clone().contiguous()}
        elif fmt.kind == "int8":
            bufs = quantize_int8_channel(weight)
        elif fmt.kind == "llm-int8":
            bufs = quantize_int8_channel(weight, fp32_scale=True)
        elif fmt.kind == "absmax":
            bufs = quantize_absmax_tensor(weight)
        elif fmt.kind == "fp8":
            bufs = quantize_fp8(weight)
        elif fmt.kind == "int4":
            bufs = quantize_int4(weight, fmt.group, fmt.zero_point)
        else:
            bufs = quantize_nf4(weight)
    packed = PackedWeight(fmt.key, (n, k), bufs)
    expected = fmt.nbytes(n, k)
    if packed.nbytes != expected:  # an internal invariant, not a user error
        raise AssertionError(f"{fmt.key}: packed {packed.nbytes} bytes, formula {expected}")
    return packed


def int4_values(packed: PackedWeight) -> torch.Tensor:
    """The unsigned 4-bit payload of an int4 format as uint8 [N, K] (values 0..15)."""
    n, k = packed.shape
    return unpack_nibbles(packed["qweight"], n * k).reshape(n, k)


def dequantize(packed: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] weight represented by ``packed``, computed in fp32, returned in ``dtype``."""
    fmt, (n, k) = packed.format, packed.shape
    b = packed.buffers
    if fmt.kind == "float":
        return b["weight"].to(dtype)
    if fmt.kind in ("int8", "llm-int8", "fp8"):
        w = b["qweight"].float() * b["scale"].float()[:, None]
    elif fmt.kind == "absmax":
        w = b["qweight"].float() * b["scale"].float()
    elif fmt.kind == "int4":
        g = fmt.group or k
        u = int4_values(packed).float().reshape(n, k // g, g)
        s = b["scale"].float().reshape(n, k // g, 1)
        if fmt.zero_point:
            z = unpack_nibbles(b["zero"], n * (k // g)).float().reshape(n, k // g, 1)
        else:
            z = 8.0
        w = ((u - z) * s).reshape(n, k)
    else:
        e = n * k
        nb = b["absmax_q"].numel()
        code2 = DYNAMIC_CODE.to(b["absmax_q"].device)
        a2 = b["absmax_scale"].repeat_interleave(NF4_NESTED_BLOCK)[:nb]
        absmax = code2[b["absmax_q"].long()] * a2 + b["absmax_offset"]
        idx = unpack_nibbles(b["qweight"], e, high_first=True).long()
        w = (NF4_CODE.to(absmax.device)[idx] * absmax.repeat_interleave(NF4_BLOCK)[:e]).reshape(n, k)
    return w.to(dtype)
