"""kernels: weight quantization and weight-only matmul kernels for the runtime.

    packed = kernels.quantize(weight, "int4-g128")   # PackedWeight; nbytes == the registry's bytes
    y = kernels.matmul(x, packed.to("cuda"), bias)   # Triton on CUDA, torch/reference on CPU
    kernels.last_kernel()                            # e.g. "triton-gemv-int4g"

Formats are the precision registry's keys (``planner/precision.py``), restated in
``kernels.formats`` because ``kernels`` imports nothing of the project. Triton is imported only
when a Triton kernel runs (``kernels.triton_kernels``).
"""

from kernels.api import (LLM_INT8_THRESHOLD, is_known_key, kernel_for, last_kernel,
                         llm_int8_matmul, matmul, quantize)
from kernels.formats import Format, parse_key
from kernels.packed import PackedWeight
from kernels.quant import dequantize
from kernels.reference import reference_llm_int8, reference_matmul

__all__ = [
    "LLM_INT8_THRESHOLD", "Format", "PackedWeight", "dequantize", "is_known_key", "kernel_for",
    "last_kernel", "llm_int8_matmul", "matmul", "parse_key", "quantize", "reference_llm_int8",
    "reference_matmul",
]
