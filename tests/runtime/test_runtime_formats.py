"""Every registry weight format through the runtime on CPU, TP 1 and TP 2 (gloo): `planner
launch` PASS with weights and KV cache equal to the prediction to the byte and activations within
the CPU tolerance (2%), and each phase (prefill, decode) and sub-block (norm, attention, MLP, LM
head) of the walk against the peak measured inside it. test_runtime_launch.py runs fp16, bf16,
int8 and int4-g128 at TP 1 and fp16 and int4-g128 at TP 2 on the same spec; this file runs the
rest, so every format is launched at both TP degrees. The formats launched are the runtime
profile's ``measured_formats``: an estimate in any other format carries a warning."""

from __future__ import annotations

import pytest

from planner.activations import moment_group, runtime_phases
from planner.engines import engine
from planner.memory import Workload, estimate, padded_vocab
from planner.precision import kv_format, weight_format
from runtime.cli import TOLERANCES
from runtime_testutil import LLAMA, launch_and_check

LAUNCHED_ELSEWHERE = {("fp16", 1), ("bf16", 1), ("int8", 1), ("int4-g128", 1), ("fp16", 2),
                      ("int4-g128", 2)}
"""(format, TP) pairs test_runtime_launch.py launches on LLAMA."""
FORMATS = ("fp8", "nf4", "absmax", "llm-int8", "int4", "int4-g128-zp", "int8", "int4-g128",
           "fp16", "bf16", "fp32")
CASES = [(f, tp) for f in FORMATS for tp in (1, 2) if (f, tp) not in LAUNCHED_ELSEWHERE]


def test_cases_cover_every_registry_format_at_both_tp():
    """Every non-llama.cpp registry format (int4-gN at its default group) is launched at TP 1 and
    TP 2 here or in test_runtime_launch.py, and is what the runtime profile lists as measured."""
    from planner.precision import weight_formats
    keys = {f.key for f in weight_formats() if not f.engines}
    assert keys == set(FORMATS)
    assert set(engine("runtime").measured_formats) == keys
    for f in FORMATS:
        for tp in (1, 2):
            assert (f, tp) in CASES or (f, tp) in LAUNCHED_ELSEWHERE


@pytest.mark.parametrize("weights,tp", CASES, ids=[f"{w}-tp{t}" for w, t in CASES])
def test_format_launch(tmp_path, weights, tp):
    rep = launch_and_check(tmp_path, LLAMA, weights, tp)
    tol = TOLERANCES["activations"]
    assert tol == 0.02
    for r in rep["ranks"]:
        cmp = r["phases"]["compare"]
        assert set(cmp) == {"prefill", "decode"}
        for name, ph in cmp.items():
            assert ph["ok"], (name, ph)
            # the measured sub-blocks of a Llama block: norms, attention, MLP, the LM head
            assert set(ph["groups"]) == {"norm", "attention", "mlp", "lm_head"}, ph
            for g, line in ph["groups"].items():
                assert abs(line["measured"] - line["predicted"]) <= tol * line["predicted"], \
                    (name, g, line)
        assert max(ph["measured"] for ph in cmp.values()) == r["lines"]["activations"]["measured"]


def test_phases_are_the_estimates_steps():
    """runtime_phases walks the same steps as planner.memory.estimate: its largest phase peak is
    the plan's activations line, for every format and both devices."""
    for f in FORMATS:
        for device in ("cpu", "cuda"):
            for tp in (1, 2):
                est = estimate(LLAMA, f, "int8", tp, 1, Workload(2, 64, 4), "runtime",
                               device=device)
                ph = runtime_phases(LLAMA, weight_format(f), kv_format("int8"), device, False, tp,
                                    2, 64, 4, padded_vocab(LLAMA, tp, engine("runtime")))
                assert set(ph) == {"prefill", "decode"}
                assert max(p["peak"] for p in ph.values()) == est.ranks[0].activations
                for p in ph.values():
                    assert max(v for k, v in p.items() if k != "peak") <= p["peak"]


def test_moment_groups():
    assert moment_group("attn.q_proj") == "attention"
    assert moment_group("attn.post_norm") == "norm"
    assert moment_group("mlp.down_proj") == moment_group("moe.gate") == "mlp"
    assert moment_group("norm") == "norm"
    assert moment_group("lm_head.logits") == "lm_head"
    assert moment_group("lm_head.fp32") is None and moment_group("embed_norm") is None


@pytest.mark.parametrize("weights,warned", [("nf4", False), ("int4-g128-zp", False),
                                            ("int4-g64", True), ("int4-g32-zp", True)])
def test_unmeasured_format_is_flagged(weights, warned):
    for device in ("cpu", "cuda"):
        est = estimate(LLAMA, weights, "fp16", 1, 1, Workload(2, 64, 4), "runtime",
                       device=device)
        flagged = [w for w in est.warnings if "never been measured" in w]
        assert bool(flagged) == warned, est.warnings
        if warned:
            assert weights in flagged[0] and "int4-g128" in flagged[0]
    # engines without a record of measured formats say nothing about it
    est = estimate(LLAMA, weights, "fp16", 1, 1, Workload(2, 64, 4), "vllm")
    assert not [w for w in est.warnings if "never been measured" in w]


def test_cuda_walk_follows_kernels_dispatch():
    """On CUDA (kernels.kernel_for): llm-int8 runs triton-llm-int8 (fused: the activation split's
    fp32 transients, no dequantized weight); fp8, nf4 and absmax dequantize in fp32 then cast
    (torch-dequant-mm); int8 and int4 formats run the Triton GEMV/GEMM (no weight copy)."""
    from planner.activations import _linear_call
    T, n, k = 128, 512, 256
    llm = _linear_call("llm-int8", True, "fp16", "cuda", T, n, k, False, 0, 2)
    assert "dequant_scratch" not in llm
    assert sum(llm.values()) == 12 * T * k + k + 8 * T  # the split's peak
    fp8 = _linear_call("fp8", True, "fp16", "cuda", T, n, k, False, 0, 2)
    assert sum(fp8.values()) == 8 * n * k  # qweight.float() and its scaled product
    assert sum(_linear_call("int4-g128", True, "fp16", "cuda", T, n, k, True, 128, 2).values()) \
        == T * n * 2
    assert sum(_linear_call("int8", True, "fp16", "cuda", 2, n, k, False, 0, 2).values()) \
        == 2 * n * 4 + 2 * n * 2


LINEAR_SHAPES = [(128, 512, 256, False), (128, 96, 256, True), (2, 1000, 256, False),
                 (17, 384, 128, True), (3, 256, 384, True)]
"""(x rows T, out n, in k, bias): prefill and decode rows, GQA k/v with a bias, the LM head."""


@pytest.mark.parametrize("weights", FORMATS)
def test_linear_call_equals_kernels_matmul(weights):
    """planner/activations.py's per-call model against kernels.matmul on the CPU, measured the
    way launch measures (MemTracker through runtime.measure.PhaseTracker): equal to the byte."""
    import torch

    import kernels
    from planner.activations import _linear_call
    from runtime.measure import PhaseTracker
    torch.set_grad_enabled(False)
    wf = weight_format(weights)
    act = torch.float32 if weights == "fp32" else torch.bfloat16
    a = 4 if weights == "fp32" else 2
    for T, n, k, bias in LINEAR_SHAPES:
        g = torch.Generator().manual_seed(T + n)
        packed = kernels.quantize(torch.randn(n, k, generator=g) * 0.05, weights)
        x = torch.randn(T, k, generator=g).to(act)
        b = torch.randn(n, generator=g).to(act) if bias else None
        tr = PhaseTracker(torch.device("cpu"), [*packed.buffers.values(), x]
                          + ([b] if bias else []))
        with tr.track():
            kernels.matmul(x, packed, b)
        group = wf.group if wf.granularity == "group" else 0
        pred = _linear_call(weights, wf.quantized, "fp32" if a == 4 else "bf16", "cpu", T, n, k,
                            bias, group, a)
        assert tr.peak_bytes == sum(pred.values()), (T, n, k, bias, kernels.last_kernel())


def test_llm_int8_outlier_columns_on_cpu():
    """With outlier columns the CPU reference adds the outlier product's moment; the per-call
    model gives it exactly (the walk takes none: the runtime's random weights have none)."""
    import torch

    import kernels
    from planner.activations import _linear_call
    from runtime.measure import PhaseTracker
    torch.set_grad_enabled(False)
    for T, n, k, n_out in [(512, 512, 256, 3), (128, 256, 128, 5)]:
        g = torch.Generator().manual_seed(n_out)
        packed = kernels.quantize(torch.randn(n, k, generator=g) * 0.05, "llm-int8")
        x = torch.randn(T, k, generator=g)
        x[:, :n_out] *= 10  # every column holds an |x| > 6
        x = x.to(torch.bfloat16)
        tr = PhaseTracker(torch.device("cpu"), [*packed.buffers.values(), x])
        with tr.track():
            kernels.matmul(x, packed)
        pred = _linear_call("llm-int8", True, "bf16", "cpu", T, n, k, False, 0, 2,
                            outliers=n_out)
        assert tr.peak_bytes == sum(pred.values())
        assert tr.peak_bytes > sum(_linear_call("llm-int8", True, "bf16", "cpu", T, n, k,
                                                False, 0, 2).values())
