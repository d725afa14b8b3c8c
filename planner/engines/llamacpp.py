"""llama.cpp's memory model: the buffers a ``llama_context`` allocates, read from its source.

Source: ggml-org/llama.cpp at commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f (the copy vendored in
llama-cpp-python 0.3.36, which ``planner verify --engine llama.cpp`` runs). Every rule below names
the file it comes from; the measured agreement is in planner/engines/NOTES.md ("llama.cpp").

llama.cpp reserves four kinds of buffer, each logged at start-up:

- **model buffer**: the GGUF's tensors as stored (planner.inspect.stored_bytes); with ``-ngl`` the
  token embedding stays in host memory (``llama_model::load_tensors`` puts the input layer on the
  CPU), the rest goes where the layer goes;
- **KV buffer**: K and V of every layer for ``n_ctx`` cells, ``n_ctx`` padded up to 256
  (llama-context.cpp: ``cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)``), rows stored in the cache
  type's GGML blocks (q8_0: 34 bytes per 32 values, q4_0: 18 per 32; precision.py);
- **output buffer**: logits of ``n_seq_max`` rows, n_vocab × n_seq × 4 bytes
  (llama-context.cpp ``output_reserve(params.n_seq_max)``);
- **compute buffer**: what ggml-alloc needs for the worst-case graph. ``sched_reserve`` builds the
  prompt-processing graph for ``n_tokens = min(n_ctx, n_ubatch)`` tokens with logits for every one
  of them (``n_outputs = min(n_tokens, n_outputs_max)``, n_outputs_max = n_batch) against the full
  KV cache (``init_full``: n_kv = every cell), and ggml-alloc (ggml/src/ggml-alloc.c) places its
  tensors greedily, freeing each when its last consumer has run and letting element-wise ops
  (add, mul, rms_norm, rope, soft_max, unary) reuse their only parent in place.

The compute buffer is modelled as the largest set of tensors ggml-alloc holds at once, phase by
phase (attention scores, MLP, LM head), each tensor padded to the CPU buffer's 32-byte alignment
(ggml-impl.h ``TENSOR_ALIGNMENT``), plus the holes ggml-alloc leaves under the phase's largest
tensor (``PLACEMENT_ROWS``, the one measured constant). The graph inputs (positions, KQ mask, KV row indices, output
ids) are allocated first and live until their last consumer, the last layer.
"""

from __future__ import annotations

from planner.errors import InfeasibleError

LLAMACPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
"""The llama.cpp commit every rule here was read from (vendored in llama-cpp-python 0.3.36)."""

CTX_PAD = 256
"""llama-context.cpp: ``cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)``, the same for n_ctx_seq."""

ALIGN = 32
"""ggml-impl.h ``TENSOR_ALIGNMENT``: the CPU buffer type's alignment; ggml-alloc pads every
tensor's offset to it."""

F32, F16, I32, I64 = 4, 2, 4, 8

PLACEMENT_ROWS = 3
"""ggml-alloc places a tensor larger than every free hole (the KQ scores, the MLP's [n_ff, T]
tensors, the logits) at the end of the last free block, i.e. above the highest tensor still live
(ggml-alloc.c ``ggml_dyn_tallocr_alloc``), so the buffer exceeds the live set by the holes below
it, left by the layers' [n_embd, T] tensors. The one measured constant of this model: against
llama.cpp 0c1e570 (planner/engines/NOTES.md, SmolLM2-135M and a synthetic Llama) the buffer is the
live set plus 2 to 5 such rows; 3 taken."""

QUANTIZED_KV = ("q8_0", "q4_0")
"""Cache types stored in GGML blocks; a quantized V cache needs flash attention
(llama-context.cpp: "quantized V cache was requested, but this requires Flash Attention")."""


def _pad(n: int, m: int) -> int:
    return -(-n // m) * m


def _t(nbytes: int) -> int:
    """One tensor's bytes as ggml-alloc places it (offset padded to the alignment)."""
    return _pad(nbytes, ALIGN)


def ctx_cells(context: int, n_seq: int = 1) -> int:
    """KV cells per sequence llama.cpp allocates for ``n_seq`` sequences of ``context`` tokens
    (``-c n_seq*context -np n_seq``): n_ctx padded to 256, then n_ctx / n_seq padded to 256."""
    n_ctx = _pad(context * n_seq, CTX_PAD)
    return _pad(n_ctx // n_seq, CTX_PAD) if n_seq > 1 else n_ctx


def ubatch_tokens(context: int, n_seq: int, n_ubatch: int) -> int:
    """Tokens of the reserved prompt graph: min(n_ctx, n_ubatch), with n_ubatch <= n_batch <= the
    unpadded n_ctx (llama-context.cpp, constructor and ``sched_reserve``)."""
    return max(1, min(context * n_seq, n_ubatch))


def compute_buffer(spec, n_ctx_cells: int, n_seq: int, tokens: int, flash_attn: bool,
                   quantized_k: bool, quantized_v: bool,
                   has_layers: bool = True, has_head: bool = True) -> tuple[int, dict[str, int]]:
    """Bytes of llama.cpp's CPU compute buffer for the reserved prompt graph of ``tokens`` tokens
    over ``n_seq`` sequences against ``n_ctx_cells`` KV cells each, and the phase setting it.

    Shapes follow llama-graph.cpp (``build_attn_mha``, ``build_ffn``, ``build_inp_*``) and
    src/models/llama.cpp; all activations are f32 (ggml's default activation type)."""
    T = tokens
    E = spec.hidden
    heads, kv, hd = spec.heads, spec.kv_heads, spec.head_dim
    q_dim, kv_dim = heads * hd, kv * hd
    n_kv = n_ctx_cells  # init_full(): n_kv = every cell of the stream
    v_trans = not flash_attn  # llama-model.cpp create_memory: v_trans = !cparams.flash_attn

    # Graph inputs, allocated before any node (ggml-alloc.c ggml_gallocr_alloc_graph_impl) and
    # freed after the last layer uses them (llama-graph.cpp build_inp_pos, build_attn_inp_kq_mask:
    # f16 mask with flash attention, else f32; llama-kv-cache.cpp build_input_k_idxs/v_idxs: I64,
    # one per value for a transposed V; build_inp_out_ids: one I32 per output).
    inputs = {"inp_pos": _t(T * I32),
              "kq_mask": _t(n_kv * T * (F16 if flash_attn else F32)),
              "k_idxs": _t(T * I64),
              "v_idxs": _t(T * (kv_dim if v_trans else 1) * I64),
              "out_ids": _t(T * I32)}
    if quantized_k and hd % 64 == 0:  # llama-kv-cache.cpp attn_rot_k: Hadamard rotation input
        inputs["k_rot"] = _t(_rot(hd) ** 2 * F32)
    if quantized_v and hd % 64 == 0:  # build_input_v_rot: always 64 x 64
        inputs["v_rot"] = _t(64 * 64 * F32)
    live_inputs = sum(inputs.values())

    phases: dict[str, dict[str, int]] = {}
    if has_layers:
        resid = _t(E * T * F32)  # the residual stream (inpL / ffn_inp), held across each block
        q = _t(q_dim * T * F32)  # Qcur, roped in place, live until KQ (or flash attention) reads it
        attn = {"inputs": live_inputs, "residual": resid, "q": q}
        if flash_attn:
            # ggml_flash_attn_ext: one f32 [head_dim, heads, T] result; no score matrix (the CPU
            # kernel's scratch lives in the threadpool's work buffer, outside the compute buffer)
            attn["attn_out"] = _t(q_dim * T * F32)
        else:
            # kq = mul_mat(k, q): f32 [n_kv, T, heads] per stream; soft_max_ext runs in place on it
            # (T tokens spread over the streams: n_kv x T x heads in all)
            attn["kq"] = _t(n_kv * T * heads * F32)
            attn["placement"] = PLACEMENT_ROWS * resid
        if quantized_k and hd % 64 == 0:  # q rotated by the Hadamard matrix: a second q
            attn["q_rot"] = q
        phases["attention"] = attn

        # KQV and the attention output: kq (or the FA result) + kqv, then the contiguous copy
        if not flash_attn:
            phases["attention_kqv"] = {"inputs": live_inputs, "residual": resid,
                                       "kq": attn["kq"], "kqv": _t(q_dim * T * F32)}

        # MLP (build_ffn, LLM_FFN_SILU + LLM_FFN_PAR): up and gate, then swiglu (GGML_OP_GLU is not
        # an in-place op in ggml-alloc.c), all three f32 [n_ff, T], beside the residual
        if spec.moe and spec.experts:
            width = spec.expert_ffn or spec.ffn
            used = spec.experts_per_token
            mlp = {"inputs": live_inputs, "residual": resid,
                   "router_logits": _t(spec.experts * T * F32),
                   "experts_up_gate_glu": 3 * _t(width * used * T * F32),
                   "experts_out": _t(E * used * T * F32)}
        else:
            mlp = {"inputs": live_inputs, "residual": resid,
                   "up_gate_glu": 3 * _t(spec.ffn * T * F32)}
        mlp["placement"] = PLACEMENT_ROWS * resid
        phases["mlp"] = mlp

    if has_head:
        # The last layer keeps the output rows (get_rows by out_ids: all T rows in the reserve),
        # then result_norm [E, T] and result_output [n_vocab, T] are graph outputs, never freed.
        phases["lm_head"] = {"result_norm": _t(E * T * F32),
                             "logits": _t(spec.vocab * T * F32),
                             "placement": PLACEMENT_ROWS * _t(E * T * F32)}
    if not phases:
        return 0, {}
    name = max(phases, key=lambda k: sum(phases[k].values()))
    return sum(phases[name].values()), {f"{name}.{k}": v for k, v in phases[name].items()}


def _rot(head_dim: int) -> int:
    """llama-kv-cache.cpp build_input_k_rot: the largest power of two >= 64 dividing head_dim."""
    n = 64
    while head_dim % (n * 2) == 0:
        n *= 2
    return n


def output_buffer(spec, n_seq: int) -> int:
    """llama-context.cpp output_reserve(n_seq_max): logits for n_seq_max rows in f32."""
    return spec.vocab * n_seq * F32


def activation_peak(step) -> tuple[int, dict[str, int]]:
    """Compute buffer + output buffer of the llama_context for the step's workload (the same for
    every step: llama.cpp reserves them once, at start-up, for the worst case)."""
    eng, kvf, wl = step.eng, step.kvf, step.workload
    quantized = kvf.key in QUANTIZED_KV
    if quantized and not eng.flash_attn:
        raise InfeasibleError(f"llama.cpp needs --flash-attn on for a {kvf.key} V cache "
                              "(a quantized V cache requires flash attention)")
    n_seq = wl.batch
    cells = ctx_cells(wl.context, n_seq)
    tokens = ubatch_tokens(wl.context, n_seq, eng.prefill_chunk_tokens or 512)
    compute, detail = compute_buffer(step.spec, cells, n_seq, tokens, eng.flash_attn,
                                     quantized, quantized, step.layers[1] > step.layers[0],
                                     step.has_head)
    # output_reserve puts the logits in the output device's host buffer type (CUDA_Host on a GPU):
    # on the CPU it is part of the rank's memory, on a GPU it is host memory
    out = output_buffer(step.spec, n_seq) if step.has_head and step.device == "cpu" else 0
    # the parts sum to the line: the compute buffer's phase (``phase.tensor``) and the output buffer
    return compute + out, {**detail, "output_buffer": out}


def split(detail: dict[str, int]) -> tuple[int, int]:
    """(compute buffer, output buffer) bytes from an activations detail of this walk."""
    out = detail.get("output_buffer", 0)
    return sum(v for k, v in detail.items() if k != "output_buffer"), out
