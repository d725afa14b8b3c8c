"""``PackedWeight``: the buffers of one quantized weight, and nothing else.

Buffer layouts, for a weight ``W`` of shape [N, K] (N = out_features, K = in_features), G = K / g:

=================  ==============  ===================================  ==========================
key                buffer          shape, dtype                         meaning
=================  ==============  ===================================  ==========================
fp32/fp16/bf16     ``weight``      [N, K] that dtype                    the weight itself
int8               ``qweight``     [N, K] int8                          round(W / scale[n])
                   ``scale``       [N] float16                          absmax(row) / 127
llm-int8           ``qweight``     [N, K] int8                          as int8
                   ``scale``       [N] float32                          absmax(row) / 127
absmax             ``qweight``     [N, K] int8                          round(W / scale)
                   ``scale``       [] float32 (0-dim)                   absmax(W) / 127
fp8                ``qweight``     [N, K] float8_e4m3fn                 W / scale[n]
                   ``scale``       [N] float32                          absmax(row) / 448
int4               ``qweight``     [ceil(N*K/2)] uint8                  nibbles, see below
                   ``scale``       [N] float16                          absmax(row) / 7
int4-gN            ``qweight``     [ceil(N*K/2)] uint8                  nibbles
                   ``scale``       [N, G] float16                       absmax(group) / 7
int4-gN-zp         ``qweight``     [ceil(N*K/2)] uint8                  nibbles
                   ``scale``       [N, G] float16                       (max - min) / 15
                   ``zero``        [ceil(N*G/2)] uint8                  4-bit zero points, nibbles
nf4                ``qweight``     [ceil(N*K/2)] uint8                  NF4 code indices, see below
                   ``absmax_q``    [B] uint8, B = ceil(N*K/64)          8-bit code of absmax - off
                   ``absmax_scale``[ceil(B/256)] float32                second-level absmax
                   ``absmax_offset`` [] float32 (0-dim)                 mean of first-level absmax
=================  ==============  ===================================  ==========================

int4 nibbles (``int4``, ``int4-gN``, ``int4-gN-zp`` payload and zero points): the row-major flattened
tensor, element ``i = n*K + k`` lives in byte ``i // 2``, in the **low** nibble when ``i`` is even and
the high nibble when odd (for even K this is simply a row-major [N, K/2] array whose byte ``j`` holds
columns ``2j`` (low) and ``2j+1`` (high)). Values are unsigned 0..15: symmetric formats store
``q + 8`` (q in -7..7), asymmetric ones store ``u`` with ``W ~= (u - zero) * scale``.

nf4 follows bitsandbytes: the flattened tensor in blocks of 64, element ``i`` in byte ``i // 2``, the
**high** nibble when ``i`` is even (bitsandbytes' order), value = NF4_CODE[index] * absmax(block);
double quantization stores ``absmax - offset`` as 8-bit indices into the signed dynamic code
(``kernels.quant.DYNAMIC_CODE``, 256 fp32 constants shared by every weight, not counted per weight:
bitsandbytes keeps the same table in each quantization state) with one fp32 scale per 256 blocks.

``nbytes`` is the exact sum of the buffers' bytes and equals the registry's
``weight_format(key).tensor_bytes(N, K)``; nothing else is held per weight.
"""

from __future__ import annotations

import torch

from kernels.formats import Format, parse_key


class PackedWeight:
    """A quantized (or passthrough) weight: its buffers, key and logical [N, K] shape."""

    __slots__ = ("key", "shape", "buffers", "format")

    def __init__(self, key: str, shape: tuple[int, int], buffers: dict[str, torch.Tensor]):
        self.format: Format = parse_key(key)
        self.key: str = self.format.key
        """Registry key, e.g. ``int4-g128``."""
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        """Logical weight shape [N, K] = [out_features, in_features]."""
        self.buffers: dict[str, torch.Tensor] = dict(buffers)
        """Name -> tensor; see the module docstring for every layout."""

    @property
    def nbytes(self) -> int:
        """Exact bytes held: the sum of every buffer's bytes."""
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers.values())).device

    @property
    def group(self) -> int:
        """Group size along K for int4-gN formats, else 0."""
        return self.format.group

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.buffers[name]

    def to(self, device) -> "PackedWeight":
        """A copy with every buffer on ``device`` (the same object if already there)."""
        device = torch.device(device)
        if all(t.device == device for t in self.buffers.values()):
            return self
        return PackedWeight(self.key, self.shape,
                            {k: t.to(device) for k, t in self.buffers.items()})

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [N, K] weight this represents, in ``dtype`` (computed in fp32)."""
        from kernels.quant import dequantize
        return dequantize(self, dtype)

    def __repr__(self) -> str:
        bufs = ", ".join(f"{k}={tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}"
                         for k, t in self.buffers.items())
        return (f"PackedWeight(key={self.key!r}, shape={self.shape}, nbytes={self.nbytes}, "
                f"device={self.device}, {bufs})")
