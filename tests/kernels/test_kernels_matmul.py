"""Every matmul path against the fp32 reference; Triton kernels run in the interpreter on CPU."""

import pytest
import torch

import kernels

DTYPES = [torch.float16, torch.bfloat16]
# (M, N, K): M hits GEMV with tl.sum (1, 3), GEMV with tl.dot (5, 16), GEMM (17, 33);
# odd N everywhere; K odd where the format allows it
MNK = [(1, 17, 64), (3, 33, 96), (5, 3, 64), (16, 1, 32), (17, 33, 64), (33, 17, 96)]
ODD_K = [(1, 3, 33), (3, 17, 17), (17, 33, 33), (33, 1, 1)]


def _rel(y, r):
    return float((y.float() - r.float()).norm() / r.float().norm().clamp_min(1e-12))


def _case(key, m, n, k, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    x = torch.randn(m, k, generator=g).to(dtype)
    b = (torch.randn(n, generator=g) * 0.1).to(dtype) if bias else None
    return x, kernels.quantize(w, key), b


def _tol(dtype):
    # fp16 output rounding ~2^-11; bf16 ~2^-8 (the interpreter truncates fp32 -> bf16)
    return 2e-3 if dtype == torch.float16 else 8e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", ["int8", "int4", "int4-g32", "int4-g32-zp", "int4-g16"])
@pytest.mark.parametrize("mnk", MNK)
def test_triton_weight_only(key, mnk, dtype):
    m, n, k = mnk
    x, p, b = _case(key, m, n, k, dtype)
    y = kernels.matmul(x, p, b, backend="triton")
    name = kernels.last_kernel()
    assert name.startswith("triton-gemv" if m <= 16 else "triton-gemm"), name
    assert y.dtype == dtype and y.shape == (m, n)
    assert _rel(y, kernels.reference_matmul(x.float(), p, b.float())) < _tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", ["int4", "int8", "int4-g3-zp"])
@pytest.mark.parametrize("mnk", ODD_K)
def test_triton_odd_k(key, mnk, dtype):
    m, n, k = mnk
    if key == "int4-g3-zp" and k % 3:
        k = 3 * k
    x, p, b = _case(key, m, n, k, dtype)
    y = kernels.matmul(x, p, b, backend="triton")
    assert _rel(y, kernels.reference_matmul(x.float(), p, b.float())) < _tol(dtype)


@pytest.mark.parametrize("key", ["int4-g64", "int4-g64-zp"])
def test_triton_group_spans_tiles(key):
    """Group larger than BLOCK_K (scale per tile) and split-K crossing groups."""
    x, p, b = _case(key, 2, 17, 256, torch.float16)
    y = kernels.matmul(x, p, None, backend="triton")
    assert _rel(y, kernels.reference_matmul(x.float(), p)) < 2e-3


def test_triton_batched_leading_dims():
    x, p, b = _case("int4-g32", 1, 17, 64, torch.float16)
    x3 = torch.randn(2, 3, 64).half()
    y = kernels.matmul(x3, p, b, backend="triton")
    assert y.shape == (2, 3, 17)
    assert _rel(y, kernels.reference_matmul(x3.float(), p, b.float())) < 2e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mnk", [(1, 17, 64), (3, 33, 33), (17, 3, 96), (33, 40, 70)])
def test_llm_int8_triton(mnk, dtype):
    m, n, k = mnk
    x, p, b = _case("llm-int8", m, n, k, dtype)
    x[:, ::7] *= 10.0  # outlier feature columns
    assert bool((x.abs() > 6).any())
    y = kernels.llm_int8_matmul(x, p, b, backend="triton")
    assert kernels.last_kernel() == "triton-llm-int8"
    # the same decomposition, computed exactly
    assert _rel(y, kernels.reference_llm_int8(x, p, b)) < _tol(dtype)
    # against the fp32 dequantize-then-matmul reference: int8 rounding of x costs ~0.5%
    assert _rel(y, kernels.reference_matmul(x.float(), p, b.float())) < 2e-2


def test_llm_int8_outliers_are_exact_path():
    """With every column an outlier, LLM.int8() is the fp16 matmul against dequantized weights."""
    x, p, _ = _case("llm-int8", 3, 17, 64, torch.float16)
    x = x * 100
    y = kernels.llm_int8_matmul(x, p, backend="triton")
    assert _rel(y, kernels.reference_matmul(x.float(), p)) < 2e-3
    y2 = kernels.llm_int8_matmul(x, p, threshold=1e9, backend="triton")  # no outliers at all
    assert _rel(y2, kernels.reference_llm_int8(x, p, threshold=1e9)) < 2e-3


def test_llm_int8_via_matmul_and_cpu_default():
    x, p, b = _case("llm-int8", 3, 17, 64, torch.float16)
    y = kernels.matmul(x, p, b)
    assert kernels.last_kernel() == "reference-llm-int8"
    assert _rel(y, kernels.reference_matmul(x.float(), p, b.float())) < 2e-2


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("key", ["fp32", "fp16", "bf16", "fp8", "nf4", "absmax", "int8", "int4",
                                 "int4-g32", "int4-g32-zp"])
def test_cpu_auto_paths(key, dtype):
    x, p, b = _case(key, 3, 17, 64, dtype)
    y = kernels.matmul(x, p, b)
    name = kernels.last_kernel()
    expected = {"fp32": "torch-linear", "fp16": "torch-linear", "bf16": "torch-linear",
                "int8": "torch-int8pack-cpu"}.get(key, "reference")
    assert name == expected == kernels.kernel_for(x, p)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}[dtype]
    assert y.dtype == dtype
    assert _rel(y, kernels.reference_matmul(x.float(), p, b.float())) < tol


def test_kernel_names():
    x1 = torch.randn(1, 64).half()
    x17 = torch.randn(17, 64).half()
    for key, suffix in [("int8", "int8"), ("int4", "int4"), ("int4-g32", "int4g"),
                        ("int4-g32-zp", "int4gzp")]:
        p = kernels.quantize(torch.randn(8, 64), key)
        assert kernels.kernel_for(x1, p, "triton") == f"triton-gemv-{suffix}"
        assert kernels.kernel_for(x17, p, "triton") == f"triton-gemm-{suffix}"
        assert kernels.kernel_for(x1, p, "reference") == "reference"


def test_empty_batch():
    x, p, b = _case("int4-g32", 1, 17, 64, torch.float16)
    y = kernels.matmul(x[:0], p, b, backend="triton")
    assert y.shape == (0, 17)


# ------------------------------------------------------------------ bad input

def _bad_cases():
    x, p, b = _case("int4-g32", 3, 17, 64, torch.float16)
    nf = kernels.quantize(torch.randn(17, 64), "nf4")
    return [
        (lambda: kernels.matmul(torch.randn(3, 65).half(), p), "in_features K=64"),
        (lambda: kernels.matmul(torch.randn(64, 3).half().t(), p), "contiguous"),
        (lambda: kernels.matmul(torch.randint(0, 3, (3, 64)), p), "dtype"),
        (lambda: kernels.matmul(x, p, torch.randn(16).half()), r"shape \[17\]"),
        (lambda: kernels.matmul(x, p, torch.ones(17, dtype=torch.int32)), "floating"),
        (lambda: kernels.matmul(x, torch.randn(17, 64)), "PackedWeight"),
        (lambda: kernels.matmul(x, p, backend="cuda"), "backend must be"),
        (lambda: kernels.matmul(x, nf, backend="triton"), "no Triton kernel"),
        (lambda: kernels.matmul(x.float(), p, backend="triton"), "fp16/bf16"),
        (lambda: kernels.llm_int8_matmul(x, p), "needs an llm-int8 weight"),
        (lambda: kernels.llm_int8_matmul(x, kernels.quantize(torch.randn(17, 64), "llm-int8"),
                                         threshold=0), "threshold"),
        (lambda: kernels.matmul(x.to("meta"), p), "on meta"),
    ]


@pytest.mark.parametrize("i", range(12))
def test_bad_matmul_input(i):
    bad, match = _bad_cases()[i]
    with pytest.raises(ValueError, match=match):
        bad()


def test_gpu_config_pruning(monkeypatch):
    """The GPU autotune lists (not runnable here) prune to configs that respect int4 groups."""
    from kernels import triton_kernels as tk
    monkeypatch.setattr(tk, "INTERPRET", False)
    for configs in (tk._gemv_configs(), tk._gemm_configs()):
        assert len(configs) > 1
        kept = tk._prune(configs, {"K": 4096}, GROUP=32)
        assert kept and all(32 % c.kwargs["BLOCK_K"] == 0 for c in kept)
        assert tk._prune(configs, {"K": 4096}, GROUP=0) == [
            c for c in configs if c.kwargs.get("SPLIT_K", 1) * c.kwargs["BLOCK_K"] <= 4096]
        small = tk._prune(configs, {"K": 64}, GROUP=0)
        assert small and all(c.kwargs.get("SPLIT_K", 1) * c.kwargs["BLOCK_K"] <= 64 for c in small)
