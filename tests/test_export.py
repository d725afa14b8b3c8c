"""planner.export: the exact launch lines for a fixed plan, and the refusals."""

import pytest

from planner.errors import InputError
from planner.export import export_command, render
from planner.memory import Workload, estimate
from planner.plan import load_plan, plan_document, write_plan
from planner.sources import resolve

GPUS = {"set": "2x3090", "gpus": [{"index": i, "name": "RTX 3090", "memory_bytes": 25769803776}
                                  for i in range(2)]}


def _plan(tmp_path, weights="int4-g128-zp", kv="fp8", tp=2, pp=1, engine="vllm",
          workload=Workload(8, 1536, 512), capacity=None):
    src = resolve("llama-2-7b")
    est = estimate(src.spec, weights, kv, tp, pp, workload, engine)
    path = str(tmp_path / f"plan-{weights}-{kv}-{tp}-{pp}-{engine}.yaml")
    write_plan(path, plan_document(est, src, GPUS, capacity=capacity))
    return load_plan(path)


@pytest.fixture
def plan(tmp_path):
    return _plan(tmp_path, capacity={"max_batch": 12})


PIN = ["env", "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=0,1"]
"""A GPU plan's command runs on its GPUs, rank 0 first (export._pinned)."""


def test_vllm(plan):
    argv, notes = export_command(plan, "vllm")
    assert render(argv) == (
        "env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1 "
        "vllm serve meta-llama/Llama-2-7b-hf --tensor-parallel-size 2 --pipeline-parallel-size 1 "
        "--max-model-len 2048 --max-num-seqs 12 --gpu-memory-utilization 0.9 --block-size 16 "
        "--kv-cache-dtype fp8")
    assert any("GPTQ or AWQ checkpoint with group size 128" in n for n in notes)


def test_vllm_fp8_and_nf4_flags(tmp_path):
    argv, _ = export_command(_plan(tmp_path, "fp8", "fp16"), "vllm")
    assert argv[-2:] == ["--quantization", "fp8"]
    argv, _ = export_command(_plan(tmp_path, "nf4", "fp16"), "vllm")
    assert argv[-2:] == ["--quantization", "bitsandbytes"]
    argv, _ = export_command(_plan(tmp_path, "bf16", "bf16"), "vllm")
    assert argv[-2:] == ["--dtype", "bfloat16"]


def test_batch_falls_back_to_workload(tmp_path):
    argv, _ = export_command(_plan(tmp_path), "vllm")
    assert argv[argv.index("--max-num-seqs") + 1] == "8"


def test_sglang(plan):
    argv, notes = export_command(plan, "sglang")
    assert argv == [*PIN, "python", "-m", "sglang.launch_server", "--model-path",
                    "meta-llama/Llama-2-7b-hf", "--tp-size", "2", "--pp-size", "1",
                    "--context-length", "2048", "--max-running-requests", "12",
                    "--mem-fraction-static", "0.9", "--kv-cache-dtype", "fp8_e4m3"]
    assert any("pre-quantized GPTQ or AWQ" in n for n in notes)


def test_trtllm(plan):
    argv, notes = export_command(plan, "trtllm")
    assert argv == [*PIN, "trtllm-serve", "meta-llama/Llama-2-7b-hf", "--tp_size", "2", "--pp_size", "1",
                    "--max_seq_len", "2048", "--max_batch_size", "12",
                    "--kv_cache_free_gpu_memory_fraction", "0.9"]
    assert any("KV cache fp8 has no trtllm-serve flag" in n for n in notes)


def test_llama_cpp(tmp_path):
    p = _plan(tmp_path, "q4_k", "int8", tp=1, pp=2, engine="llama.cpp",
              workload=Workload(4, 1536, 512))
    argv, notes = export_command(p, "llama.cpp")
    assert argv == ["env", "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=0,1",
                    "llama-server", "-m", "Llama-2-7b-hf-Q4_K.gguf", "-c", "8192", "-np", "4",
                    "-ngl", "999", "--split-mode", "layer", "-ts", "16,16",
                    "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]
    assert any("placeholder" in n for n in notes)


def test_int8_weights_need_a_checkpoint(tmp_path):
    argv, notes = export_command(_plan(tmp_path, "int8", "fp16"), "vllm")
    assert "--quantization" not in argv
    assert any("compressed-tensors W8A16" in n for n in notes)


# -- refusals ----------------------------------------------------------------------------------

def test_llama_cpp_refuses_tp(plan):
    with pytest.raises(InputError, match="llama.cpp cannot run this plan's TP 2.*--pp 2"):
        export_command(plan, "llama.cpp")


def test_llama_cpp_refuses_gptq_format(tmp_path):
    with pytest.raises(InputError, match="llama.cpp cannot run this plan's weight format int4-g128"):
        export_command(_plan(tmp_path, "int4-g128", "fp16", tp=1), "llama.cpp")


def test_llama_cpp_refuses_fp8_kv(tmp_path):
    with pytest.raises(InputError, match="KV-cache format fp8"):
        export_command(_plan(tmp_path, "fp16", "fp8", tp=1), "llama.cpp")


def test_vllm_refuses_ggml_and_int4_kv(tmp_path):
    with pytest.raises(InputError, match="vLLM cannot run this plan's weight format q4_k"):
        export_command(_plan(tmp_path, "q4_k", "fp16", tp=1, engine="llama.cpp"), "vllm")
    with pytest.raises(InputError, match="vLLM cannot run this plan's KV-cache format int4"):
        export_command(_plan(tmp_path, "fp16", "int4", engine="runtime"), "vllm")


def test_sglang_refuses_llm_int8(tmp_path):
    with pytest.raises(InputError, match="SGLang cannot run this plan's weight format llm-int8"):
        export_command(_plan(tmp_path, "llm-int8", "fp16"), "sglang")


def test_trtllm_refuses_nf4(tmp_path):
    with pytest.raises(InputError, match="TensorRT-LLM cannot run this plan's weight format nf4"):
        export_command(_plan(tmp_path, "nf4", "fp16"), "trtllm")


def test_unknown_engine(plan):
    with pytest.raises(InputError, match="unknown engine 'vlm'.*did you mean 'vllm'"):
        export_command(plan, "vlm")
