"""Quantization quality: signal-to-noise ratio (dB) of every format on the same weights.

    python -m kernels.quality          # prints the markdown table kept in kernels/NOTES.md

SNR = 10 log10( sum W^2 / sum (W - dq(q(W)))^2 ). Two weight sets, both [N, K] = [512, 1024], seed 0:
``gaussian`` (N(0, 0.02^2), an initialiser's weights) and ``outliers`` (the same, plus 8 input
columns scaled by 20x and 0.1% of elements replaced by +-10x-sigma-scaled spikes: the outlier
features GLM-130B and LLM.int8() describe, and heavy-tailed single weights).
"""

from __future__ import annotations

import math

import torch

from kernels.quant import dequantize, quantize

SNR_FORMATS = ("fp16", "bf16", "fp8", "int8", "llm-int8", "absmax", "int4-g32", "int4-g64",
               "int4-g128", "int4-g128-zp", "int4", "nf4")


def make_weights(kind: str, n: int = 512, k: int = 1024, seed: int = 0) -> torch.Tensor:
    """Deterministic fp32 weights: ``gaussian`` or ``outliers``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    if kind == "gaussian":
        return w
    if kind != "outliers":
        raise ValueError(f"kind must be 'gaussian' or 'outliers', got {kind!r}")
    cols = torch.randperm(k, generator=g)[:8]
    w[:, cols] *= 20.0
    spikes = torch.rand(n, k, generator=g) < 1e-3
    w[spikes] = torch.sign(torch.randn(int(spikes.sum()), generator=g)) * 0.2
    return w


def snr_db(w: torch.Tensor, key: str) -> float:
    """SNR in dB of ``key`` on ``w`` (inf for a lossless round trip)."""
    err = (w - dequantize(quantize(w, key), torch.float32)).double().pow(2).sum().item()
    sig = w.double().pow(2).sum().item()
    return math.inf if err == 0 else 10.0 * math.log10(sig / err)


def snr_table(formats=SNR_FORMATS) -> dict[str, dict[str, float]]:
    """{format: {"gaussian": dB, "outliers": dB}}."""
    ws = {kind: make_weights(kind) for kind in ("gaussian", "outliers")}
    return {f: {kind: snr_db(w, f) for kind, w in ws.items()} for f in formats}


def markdown(table: dict[str, dict[str, float]]) -> str:
    lines = ["| format | gaussian SNR (dB) | outliers SNR (dB) |", "| --- | ---: | ---: |"]
    for f, row in table.items():
        lines.append(f"| `{f}` | {row['gaussian']:.2f} | {row['outliers']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(snr_table()))
