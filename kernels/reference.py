"""The torch references every kernel is tested against (fp32 dequantize, then matmul)."""

from __future__ import annotations

import torch

from kernels.packed import PackedWeight
from kernels.quant import dequantize


def reference_matmul(x: torch.Tensor, packed: PackedWeight,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ dequant(W)^T (+ bias) in fp32, returned in x's dtype. x: [..., K]."""
    w = dequantize(packed, torch.float32)
    y = x.float().reshape(-1, x.shape[-1]) @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])


def llm_int8_split(x2: torch.Tensor, threshold: float):
    """LLM.int8()'s decomposition of x [M, K]: outlier columns (any |x| > threshold), the row-wise
    absmax int8 quantization of the rest. Returns (xq int8 [M, K] with outlier columns zeroed,
    sx fp32 [M] = row absmax / 127 (1 for an all-zero row), idx int32 [n_out] outlier columns)."""
    cols = (x2.abs() > threshold).any(dim=0)
    rest = x2.float().masked_fill(cols[None, :], 0.0)
    absmax = rest.abs().amax(dim=1)
    sx = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    xq = torch.clamp(torch.round(rest / sx[:, None]), -127, 127).to(torch.int8)
    idx = torch.nonzero(cols).flatten().to(torch.int32)  # host sync, as in bitsandbytes
    return xq.contiguous(), sx.contiguous(), idx


def reference_llm_int8(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
                       threshold: float = 6.0) -> torch.Tensor:
    """The LLM.int8() decomposition computed exactly (integer part in fp64, outliers in fp32):
    y = (xq @ wq^T) * sx[m] * sw[n] + x[:, outliers] @ dequant(W)[:, outliers]^T (+ bias)."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, sx, idx = llm_int8_split(x2, threshold)
    wq, sw = packed["qweight"], packed["scale"].double()
    y = (xq.double() @ wq.double().t()) * sx.double()[:, None] * sw[None, :]
    if idx.numel():
        il = idx.long()
        y = y + (x2[:, il].double() @ wq[:, il].double().t()) * sw[None, :]
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])
