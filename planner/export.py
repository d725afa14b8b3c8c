"""A plan as launch arguments for vLLM, SGLang, TensorRT-LLM or llama.cpp (``planner export``).

:func:`export_command` maps the plan's TP, PP, weight format, KV-cache format, context (prompt + new
tokens), batch (``capacity.max_batch`` when the plan has it, else the workload batch) and memory cap
(the plan's ``engine.gpu_memory_utilization``) onto each engine's documented flags. Every flag below
carries the documentation page it was read from. Where a format needs a pre-quantized checkpoint (a
GPTQ/AWQ or compressed-tensors export) the argv stays honest and a note says so; where the engine
cannot run the plan's format at all, InputError names both.

Flag sources (read for this module):

- vLLM: https://docs.vllm.ai/en/v0.8.5/serving/engine_args.html (engine arguments of ``vllm
  serve``), https://docs.vllm.ai/en/latest/features/quantization/bnb/ (bitsandbytes),
  https://docs.vllm.ai/en/latest/features/quantization/quantized_kvcache/ (fp8 KV cache).
- SGLang: https://docs.sglang.io/advanced_features/server_arguments.html
  (sgl-project/sglang docs/advanced_features/server_arguments.md),
  https://docs.sglang.io/advanced_features/quantization.html (offline vs online quantization).
- TensorRT-LLM: https://nvidia.github.io/TensorRT-LLM/0.18.2/commands/trtllm-serve.html.
- llama.cpp: ggml-org/llama.cpp tools/server/README.md (llama-server options),
  https://github.com/ggml-org/llama.cpp/issues/11681 (the context is shared by the parallel slots).
"""

from __future__ import annotations

import os
import shlex

from planner.errors import InputError
from planner.plan import Plan

ENGINES = ("vllm", "sglang", "trtllm", "llama.cpp")

_GGML = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k", "q2_k")


def render(argv: list[str]) -> str:
    """One shell line (shlex.join: quoted where needed)."""
    return shlex.join(argv)


def _max_batch(plan: Plan) -> int:
    cap = plan.doc.get("capacity")
    mb = cap.get("max_batch") if isinstance(cap, dict) else None
    if isinstance(mb, int) and not isinstance(mb, bool) and mb >= 1:
        return mb
    return plan.workload.batch


def _utilization(plan: Plan) -> float | None:
    u = plan.doc.get("engine", {}).get("gpu_memory_utilization")
    return float(u) if isinstance(u, (int, float)) and not isinstance(u, bool) else None


def _model(plan: Plan) -> str:
    """The source path when the plan came from a file or folder, else the catalog's HF id."""
    if plan.source.get("kind") != "catalog":
        return plan.source["path"]
    return plan.spec.name


def _fmt_float(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".")


def _pre_quantized_note(engine: str, weights: str) -> str | None:
    """A note for weight formats that the engine loads only from a pre-quantized checkpoint."""
    if weights == "int8":
        return (f"{engine}: weights int8 (W8A16, per-channel) need a pre-quantized checkpoint, e.g. a "
                "compressed-tensors W8A16 export (llm-compressor); pass that checkpoint as the "
                "model; the engine reads its quantization from its config")
    if weights == "int4":
        return (f"{engine}: weights int4 (per-channel W4A16) need a pre-quantized checkpoint, e.g. "
                "a compressed-tensors W4A16 or GPTQ export with no grouping; pass that checkpoint "
                "as the model")
    if weights.startswith("int4-g"):
        group = weights[len("int4-g"):].split("-")[0]
        kind = "asymmetric (zero points)" if weights.endswith("-zp") else "symmetric"
        return (f"{engine}: weights {weights} need a pre-quantized GPTQ or AWQ checkpoint with "
                f"group size {group}, {kind}; pass that checkpoint as the model; the engine reads "
                "its quantization from its config")
    return None


def _refuse(engine: str, what: str, why: str) -> InputError:
    return InputError(f"export: {engine} cannot run this plan's {what}{why}")


def export_command(plan: Plan, engine: str) -> tuple[list[str], list[str]]:
    """(argv, notes) launching ``plan`` on ``engine`` (vllm, sglang, trtllm, llama.cpp)."""
    key = str(engine).strip().lower()
    aliases = {"tensorrt-llm": "trtllm", "trt-llm": "trtllm", "llamacpp": "llama.cpp",
               "llama-cpp": "llama.cpp"}
    key = aliases.get(key, key)
    if key not in ENGINES:
        from planner.errors import suggest

        raise InputError(f"export: unknown engine {engine!r}{suggest(key, list(ENGINES))}; "
                         f"known: {', '.join(ENGINES)}")
    argv, notes = {"vllm": _vllm, "sglang": _sglang, "trtllm": _trtllm,
                   "llama.cpp": _llama_cpp}[key](plan)
    return _pinned(plan, argv, notes)


def _pinned(plan: Plan, argv: list[str], notes: list[str]) -> tuple[list[str], list[str]]:
    """A GPU plan's command runs on the plan's GPUs, rank 0 first: ``env CUDA_DEVICE_ORDER=
    PCI_BUS_ID CUDA_VISIBLE_DEVICES=…`` (PCI order is NVML's, the order ``local`` numbers cards
    in; CUDA's default puts the fastest first). Each engine numbers its ranks over the visible
    devices in order (vLLM and SGLang TP/PP ranks, llama.cpp's -ts entries)."""
    if plan.device != "cuda" or not plan.ranks or any(r.get("gpu") is None for r in plan.ranks):
        return argv, notes
    gpus = [r["gpu"] for r in sorted(plan.ranks, key=lambda r: r["rank"])]
    names = {g["index"]: g["name"] for g in plan.doc["layout"]["gpus"]}
    notes = notes + ["GPUs: " + ", ".join(f"rank {i} on GPU {g} ({names.get(g, '?')})"
                                         for i, g in enumerate(gpus))]
    return ["env", "CUDA_DEVICE_ORDER=PCI_BUS_ID",
            f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))}", *argv], notes


# -- vLLM --------------------------------------------------------------------------------------

def _vllm(plan: Plan) -> tuple[list[str], list[str]]:
    notes: list[str] = []
    w, kv = plan.weights, plan.kv_cache
    if w in _GGML or w == "absmax":
        raise _refuse("vLLM", f"weight format {w}",
                      " (GGML block formats run only in llama.cpp)" if w in _GGML else
                      " (per-tensor int8 absmax has no vLLM kernel)")
    if kv not in ("fp16", "bf16", "fp8"):
        raise _refuse("vLLM", f"KV-cache format {kv}", " (its KV cache is fp16/bf16 or fp8)")
    # `vllm serve MODEL` (positional model; docs.vllm.ai quickstart / engine args).
    argv = ["vllm", "serve", _model(plan),
            # engine_args: --tensor-parallel-size, --pipeline-parallel-size
            "--tensor-parallel-size", str(plan.tp),
            "--pipeline-parallel-size", str(plan.pp),
            # engine_args: --max-model-len (prompt + output), --max-num-seqs (sequences per step)
            "--max-model-len", str(plan.workload.context),
            "--max-num-seqs", str(_max_batch(plan))]
    util = _utilization(plan)
    if util is not None:  # engine_args: --gpu-memory-utilization (fraction of each GPU)
        argv += ["--gpu-memory-utilization", _fmt_float(util)]
    block = plan.doc.get("engine", {}).get("block_size")
    if isinstance(block, int) and not isinstance(block, bool):
        argv += ["--block-size", str(block)]  # engine_args: --block-size {8,16,32}
    # engine_args: --dtype {auto,half,float16,bfloat16,float,float32}
    dtype = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(w)
    if dtype:
        argv += ["--dtype", dtype]
    if w == "fp8":
        # engine_args --quantization fp8: dynamic fp8 weights from an fp16/bf16 checkpoint
        # (docs.vllm.ai .../quantization/fp8: W8A8 on sm89+, W8A16 Marlin on sm75+).
        argv += ["--quantization", "fp8"]
    elif w == "nf4":
        # bnb page: in-flight 4-bit bitsandbytes quantization needs --quantization bitsandbytes.
        argv += ["--quantization", "bitsandbytes"]
        notes.append("vLLM: in-flight bitsandbytes 4-bit; check that the checkpoint's "
                     "bnb_4bit_quant_type is nf4 with double quantization, as the plan assumes")
    elif w == "llm-int8":
        # bnb page: pre-quantized bitsandbytes checkpoints are read from their config.
        notes.append("vLLM: weights llm-int8 need a pre-quantized bitsandbytes 8-bit checkpoint "
                     "(vLLM quantizes in flight to 4-bit only); pass that checkpoint as the model")
    else:
        note = _pre_quantized_note("vLLM", w)
        if note:
            notes.append(note)
    if kv == "fp8":  # engine_args: --kv-cache-dtype {auto,fp8,fp8_e5m2,fp8_e4m3}
        argv += ["--kv-cache-dtype", "fp8"]
        notes.append("vLLM: fp8 KV cache without calibrated scales uses scale 1.0 "
                     "(quantized_kvcache page)")
    if plan.device == "cpu":
        notes.append("vLLM: the plan is for CPU ranks; this needs vLLM's CPU build")
    return argv, notes


# -- SGLang ------------------------------------------------------------------------------------

def _sglang(plan: Plan) -> tuple[list[str], list[str]]:
    notes: list[str] = []
    w, kv = plan.weights, plan.kv_cache
    if w in _GGML or w in ("absmax", "llm-int8"):
        raise _refuse("SGLang", f"weight format {w}",
                      " (GGML block formats run only in llama.cpp)" if w in _GGML else
                      " (no documented SGLang quantization method for it)")
    if kv not in ("fp16", "bf16", "fp8"):
        raise _refuse("SGLang", f"KV-cache format {kv}",
                      " (--kv-cache-dtype offers auto, bf16, fp8_e5m2, fp8_e4m3, fp4_e2m1)")
    # server_arguments.md: python -m sglang.launch_server --model-path ...
    argv = ["python", "-m", "sglang.launch_server", "--model-path", _model(plan),
            # "Runtime options": --tp-size (--tensor-parallel-size), --pp-size
            "--tp-size", str(plan.tp), "--pp-size", str(plan.pp),
            # "Model and tokenizer": --context-length
            "--context-length", str(plan.workload.context),
            # "Memory and scheduling": --max-running-requests
            "--max-running-requests", str(_max_batch(plan))]
    util = _utilization(plan)
    if util is not None:
        # "Memory and scheduling": --mem-fraction-static = weights + KV pool share of the GPU;
        # the plan's utilization cap is the nearest equivalent.
        argv += ["--mem-fraction-static", _fmt_float(util)]
        notes.append("SGLang: --mem-fraction-static covers weights and the KV pool only; "
                     "activations and CUDA graphs live in the rest")
    # "Quantization and data type": --dtype {auto,half,float16,bfloat16,float,float32}
    dtype = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(w)
    if dtype:
        argv += ["--dtype", dtype]
    if w == "fp8":  # server_arguments.md: "add --quantization fp8 on a fp16 checkpoint"
        argv += ["--quantization", "fp8"]
    elif w == "nf4":
        notes.append("SGLang: weights nf4 need a pre-quantized bitsandbytes 4-bit (nf4) "
                     "checkpoint; SGLang reads offline quantization from the model config "
                     "(quantization.md); pass that checkpoint as the model")
    else:
        note = _pre_quantized_note("SGLang", w)
        if note:
            notes.append(note)
    if kv == "fp8":  # "Quantization and data type": --kv-cache-dtype fp8_e4m3
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    elif kv == "bf16" and w != "bf16":
        argv += ["--kv-cache-dtype", "bf16"]
    if plan.device == "cpu":
        argv += ["--device", "cpu"]  # "Runtime options": --device cpu
    return argv, notes


# -- TensorRT-LLM ------------------------------------------------------------------------------

def _trtllm(plan: Plan) -> tuple[list[str], list[str]]:
    notes: list[str] = []
    w, kv = plan.weights, plan.kv_cache
    if plan.device == "cpu":
        raise _refuse("TensorRT-LLM", "device cpu", " (it runs on NVIDIA GPUs only)")
    if w in _GGML or w in ("absmax", "llm-int8", "nf4"):
        raise _refuse("TensorRT-LLM", f"weight format {w}",
                      " (GGML block formats run only in llama.cpp)" if w in _GGML else
                      " (no TensorRT-LLM quantization mode for it)")
    if kv not in ("fp16", "bf16", "fp8"):
        raise _refuse("TensorRT-LLM", f"KV-cache format {kv}",
                      " (this export knows no documented trtllm-serve option for it)")
    # trtllm-serve [OPTIONS] MODEL (0.18.2 commands/trtllm-serve.html)
    argv = ["trtllm-serve", _model(plan),
            "--tp_size", str(plan.tp), "--pp_size", str(plan.pp),
            # --max_seq_len: "maximum total length of one request, including prompt and outputs"
            "--max_seq_len", str(plan.workload.context),
            # --max_batch_size: "maximum number of requests that the engine can schedule"
            "--max_batch_size", str(_max_batch(plan))]
    util = _utilization(plan)
    if util is not None:
        # --kv_cache_free_gpu_memory_fraction: share of the memory left after weights and buffers
        argv += ["--kv_cache_free_gpu_memory_fraction", _fmt_float(util)]
        notes.append("TensorRT-LLM: --kv_cache_free_gpu_memory_fraction is a share of the memory "
                     "free after weights and buffers, not of the whole GPU as in the plan")
    if w == "fp8":
        notes.append("TensorRT-LLM: weights fp8 need an FP8 checkpoint (e.g. exported with "
                     "NVIDIA Model Optimizer); pass that checkpoint as the model")
    else:
        note = _pre_quantized_note("TensorRT-LLM", w)
        if note:
            notes.append(note)
    if kv == "fp8":
        notes.append("TensorRT-LLM: KV cache fp8 has no trtllm-serve flag; use a checkpoint "
                     "quantized with an FP8 KV cache, or set it in an --extra_llm_api_options "
                     "YAML (kv_cache_config)")
    return argv, notes


# -- llama.cpp ---------------------------------------------------------------------------------

def _llama_cpp(plan: Plan) -> tuple[list[str], list[str]]:
    notes: list[str] = []
    w, kv = plan.weights, plan.kv_cache
    if plan.tp > 1:
        raise _refuse("llama.cpp", f"TP {plan.tp}",
                      "; llama.cpp splits layers across GPUs (--split-mode layer): re-plan with "
                      f"--tp 1 --pp {plan.tp * plan.pp}")
    if w not in _GGML and w not in ("fp16", "bf16", "fp32"):
        raise _refuse("llama.cpp", f"weight format {w}",
                      f" (it runs GGML formats: {', '.join(_GGML)}, or fp16/bf16/fp32)")
    # tools/server/README.md: -ctk/-ctv allowed values f32, f16, bf16, q8_0, q4_0, ...
    ctype = {"fp16": None, "bf16": "bf16", "int8": "q8_0", "int4": "q4_0", "q8_0": "q8_0",
             "q4_0": "q4_0"}
    if kv not in ctype:
        raise _refuse("llama.cpp", f"KV-cache format {kv}",
                      " (-ctk/-ctv: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)")
    if plan.source.get("kind") == "gguf":
        model = plan.source["path"]
    else:
        base = os.path.basename(plan.spec.name.rstrip("/")) or "model"
        model = f"{base}-{w.upper()}.gguf"
        notes.append(f"llama.cpp: needs a GGUF file; {model} is a placeholder: convert the "
                     f"checkpoint with convert_hf_to_gguf.py (and llama-quantize to {w}) and "
                     "pass its path")
    batch = _max_batch(plan)
    ctx = plan.workload.context
    argv = ["llama-server", "-m", model,  # -m, --model FNAME
            # -c, --ctx-size: the KV cache of all slots together; each of -np slots gets c / np
            # (issue #11681), so c = context x slots.
            "-c", str(ctx * batch),
            "-np", str(batch),  # -np, --parallel N: number of server slots
            # -ngl, --n-gpu-layers N: a number above the layer count puts every layer on the GPU
            "-ngl", "0" if plan.device == "cpu" else "999"]
    if plan.pp > 1 and plan.device == "cuda":
        # -sm, --split-mode layer: "split layers and KV across GPUs (pipelined)";
        # -ts, --tensor-split: proportions per GPU, here the plan's layers per stage.
        stages = []
        for r in plan.doc["layout"]["ranks"]:
            lo, hi = r["layers"]
            stages.append(str(hi - lo))
        argv += ["--split-mode", "layer", "-ts", ",".join(stages)]
    if ctype[kv]:
        argv += ["-ctk", ctype[kv], "-ctv", ctype[kv]]
        if kv in ("int8", "int4", "q8_0", "q4_0"):
            # -fa, --flash-attn [on|off|auto]: a quantized V cache needs flash attention.
            argv += ["-fa", "on"]
        if kv in ("int8", "int4"):  # planned for another engine (llama.cpp plans say q8_0/q4_0)
            notes.append(f"llama.cpp: {ctype[kv]} stores the KV cache in blocks of 32 with one "
                         f"fp16 scale each; the plan's {kv} counts one scale per token per head, "
                         "so the bytes differ slightly")
    if plan.engine != "llama.cpp":
        notes.append(f"llama.cpp: the plan's prediction is for engine {plan.engine}; re-plan "
                     "with --engine llama.cpp to predict llama.cpp's memory")
    return argv, notes
