"""Quantizers, packing, dequantizers: round trips, analytic error bounds, exact byte sizes, bad input."""

import pytest
import torch

import kernels
from kernels.quant import (DYNAMIC_CODE, NF4_CODE, int4_values, pack_nibbles, unpack_nibbles)
from planner.precision import weight_format

ALL_KEYS = ["fp32", "fp16", "bf16", "fp8", "int8", "llm-int8", "absmax", "int4", "int4-g128",
            "int4-g128-zp", "int4-g32", "int4-g32-zp", "int4-g3", "int4-g3-zp", "int4-g64", "nf4"]


def _w(n, k, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.05).to(dtype)


def _shapes(key):
    f = kernels.parse_key(key)
    g = f.group
    if g:
        return [(1, g), (3, 2 * g), (17, 3 * g), (33, g)]
    return [(1, 1), (3, 17), (17, 33), (33, 3), (64, 128), (5, 130)]


@pytest.mark.parametrize("key", ALL_KEYS)
def test_nbytes_equals_registry(key):
    for n, k in _shapes(key):
        p = kernels.quantize(_w(n, k), key)
        assert p.nbytes == weight_format(key).tensor_bytes(n, k), (key, n, k)
        assert p.shape == (n, k) and p.key == key


def test_nbytes_formula_many_shapes():
    from kernels.formats import parse_key
    for key in ALL_KEYS + ["int4-g7", "int4-g7-zp", "int4-g256-zp"]:
        f = parse_key(key)
        for n in (1, 2, 3, 63, 64, 65, 1000, 4096):
            for k in (1, 3, 64, 257, 4096, 14336):
                if f.group and k % f.group:
                    continue
                assert f.nbytes(n, k) == weight_format(key).tensor_bytes(n, k), (key, n, k)


@pytest.mark.parametrize("high_first", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 64])
def test_nibble_round_trip_bit_exact(n, high_first):
    u = torch.randint(0, 16, (n,), dtype=torch.uint8)
    p = pack_nibbles(u, high_first)
    assert p.dtype == torch.uint8 and p.numel() == (n + 1) // 2
    assert torch.equal(unpack_nibbles(p, n, high_first), u)


def test_nibble_layout_documented():
    # element 0 in the low nibble of byte 0, element 1 in the high nibble (int4); NF4 the reverse
    u = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert pack_nibbles(u).tolist() == [0x21, 0x03]
    assert pack_nibbles(u, high_first=True).tolist() == [0x12, 0x30]


@pytest.mark.parametrize("key", ["int4", "int4-g32", "int4-g3", "int4-g32-zp"])
def test_int4_requantize_is_identity(key):
    """Quantizing the dequantized weight gives back the same nibbles and scales (bit-exact)."""
    k = 96 if key != "int4" else 33
    p = kernels.quantize(_w(17, k), key)
    p2 = kernels.quantize(p.dequantize(torch.float32), key)
    for name in p.buffers:
        assert torch.equal(p[name], p2[name]), name


@pytest.mark.parametrize("key,qmax", [("int8", 127), ("llm-int8", 127), ("int4", 7),
                                      ("int4-g32", 7), ("int4-g3", 7)])
def test_symmetric_error_bound(key, qmax):
    n, k = 33, 96
    w = _w(n, k, seed=1)
    p = kernels.quantize(w, key)
    err = (w - p.dequantize()).abs()
    g = p.group or k
    s = p["scale"].float().reshape(n, -1).repeat_interleave(g, dim=1)
    assert bool((err <= s / 2 * (1 + 1e-3) + 1e-9).all())
    if p.format.kind == "int4":
        u = int4_values(p).int()
        assert int(u.min()) >= 8 - qmax and int(u.max()) <= 8 + qmax
    else:
        assert int(p["qweight"].abs().max()) == qmax  # the absmax element maps to +-qmax


def test_absmax_error_bound():
    w = _w(17, 33)
    p = kernels.quantize(w, "absmax")
    assert p["scale"].shape == () and p["scale"].dtype == torch.float32
    assert bool(((w - p.dequantize()).abs() <= p["scale"] / 2 * (1 + 1e-6)).all())


def test_zero_point_error_bound_and_range():
    n, k, g = 17, 96, 32
    w = _w(n, k) + 0.03  # shifted: asymmetric ranges
    p = kernels.quantize(w, f"int4-g{g}-zp")
    s = p["scale"].float().repeat_interleave(g, dim=1)
    assert bool(((w - p.dequantize()).abs() <= s / 2 * (1 + 1e-3) + 1e-9).all())
    z = unpack_nibbles(p["zero"], n * (k // g))
    assert int(z.max()) <= 15


def test_zero_point_beats_symmetric_on_shifted_weights():
    w = _w(64, 256).abs()  # one-signed groups: symmetric wastes half its levels
    e_sym = (w - kernels.quantize(w, "int4-g64").dequantize()).pow(2).sum()
    e_zp = (w - kernels.quantize(w, "int4-g64-zp").dequantize()).pow(2).sum()
    assert e_zp < e_sym


def test_fp8_error_bound():
    w = _w(17, 65)
    p = kernels.quantize(w, "fp8")
    assert p["qweight"].dtype == torch.float8_e4m3fn and p["scale"].dtype == torch.float32
    s = p["scale"][:, None]
    # 3 mantissa bits: relative half-ulp 2^-4 for normals; 2^-10 * scale absolute for subnormals
    bound = torch.maximum(w.abs() * 2.0 ** -4, s * 2.0 ** -10) * (1 + 1e-6)
    assert bool(((w - p.dequantize()).abs() <= bound).all())


def test_nf4_layout_and_bound():
    n, k = 33, 70  # 2310 elements: a partial last block
    w = _w(n, k)
    p = kernels.quantize(w, "nf4")
    nb = -(-n * k // 64)
    assert p["qweight"].shape == ((n * k + 1) // 2,) and p["absmax_q"].shape == (nb,)
    assert p["absmax_scale"].shape == (-(-nb // 256),) and p["absmax_offset"].shape == ()
    flat = w.reshape(-1)
    pad = torch.nn.functional.pad(flat, (0, nb * 64 - flat.numel())).reshape(nb, 64)
    absmax = pad.abs().amax(1)
    absmax_dq = (DYNAMIC_CODE[p["absmax_q"].long()] * p["absmax_scale"].repeat_interleave(256)[:nb]
                 + p["absmax_offset"])
    # double quantization: absmax error within half the widest dynamic-code gap times its scale
    gap = (DYNAMIC_CODE[1:] - DYNAMIC_CODE[:-1]).max()
    assert bool(((absmax - absmax_dq).abs() <= gap / 2 * p["absmax_scale"].max() + 1e-7).all())
    half_gap = float((NF4_CODE[1:] - NF4_CODE[:-1]).max()) / 2
    a = absmax.repeat_interleave(64)[: n * k]
    ad = absmax_dq.repeat_interleave(64)[: n * k]
    bound = half_gap * a + (a - ad).abs() + 1e-7
    assert bool(((flat - p.dequantize().reshape(-1)).abs() <= bound).all())


def test_nf4_code_indices_hit_levels():
    # weights that are exactly NF4 levels times a block absmax of 1 reconstruct up to the
    # double-quantized absmax
    w = NF4_CODE.repeat(8).reshape(2, 64)
    p = kernels.quantize(w, "nf4")
    idx = unpack_nibbles(p["qweight"], 128, high_first=True)
    assert torch.equal(idx.long(), torch.arange(16).repeat(8))


@pytest.mark.parametrize("key", ["fp32", "fp16", "bf16"])
def test_passthrough_exact(key):
    w = _w(3, 17)
    p = kernels.quantize(w, key)
    assert torch.equal(p.dequantize(), w.to(p["weight"].dtype).float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_accepted(dtype):
    p = kernels.quantize(_w(4, 64, dtype=dtype), "int4-g32")
    assert p.nbytes == weight_format("int4-g32").tensor_bytes(4, 64)


def test_zero_rows_and_tiny_weights():
    w = torch.zeros(3, 64)
    w[1] = 1e-12
    for key in ["int8", "int4", "int4-g32", "int4-g32-zp", "nf4", "fp8", "absmax"]:
        dq = kernels.quantize(w, key).dequantize()
        assert bool(torch.isfinite(dq).all()) and float(dq[0].abs().max()) == 0.0, key


def test_to_device_keeps_buffers():
    p = kernels.quantize(_w(3, 64), "int4-g32-zp")
    q = p.to("cpu")
    assert q.nbytes == p.nbytes and q.device.type == "cpu"
    assert "int4-g32-zp" in repr(p)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("bad,match", [
    (lambda: kernels.quantize(torch.randn(4, 100), "int4-g32"), "multiple of the group size 32"),
    (lambda: kernels.quantize(torch.randn(4, 64), "int5"), "unknown weight format"),
    (lambda: kernels.quantize(torch.randn(4, 64), 4), "must be a string"),
    (lambda: kernels.quantize(torch.randn(64), "int8"), "2-D"),
    (lambda: kernels.quantize(torch.randn(2, 3, 4), "int8"), "2-D"),
    (lambda: kernels.quantize(torch.randint(0, 5, (4, 64)), "int8"), "dtype"),
    (lambda: kernels.quantize(torch.randn(64, 4).t(), "int8"), "contiguous"),
    (lambda: kernels.quantize(torch.tensor([[1.0, float("nan")]]), "int8"), "NaN/inf"),
    (lambda: kernels.quantize(torch.tensor([[1.0, float("inf")]]), "nf4"), "NaN/inf"),
    (lambda: kernels.quantize(torch.full((2, 2), 1e6), "int4"), "fp16 range"),
    (lambda: kernels.quantize(torch.full((2, 2), 1e5), "fp16"), "fp16 range"),
    (lambda: kernels.quantize(torch.empty(0, 4), "int8"), "positive"),
    (lambda: kernels.quantize([[1.0]], "int8"), "torch.Tensor"),
])
def test_bad_weights(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
