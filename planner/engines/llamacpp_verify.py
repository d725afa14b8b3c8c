"""``planner verify --engine llama.cpp``: run llama.cpp (through llama-cpp-python) on the user's
GGUF and compare the buffers it reserves with planner/engines/llamacpp.py's prediction.

What is measured, and from where:

- llama.cpp's own start-up log lines (``llama_log_set``): ``CPU model buffer size``, ``CPU KV
  buffer size``, ``CPU output buffer size``, ``CPU compute buffer size``. They print MiB to two
  decimals, so each is matched to
- the exact byte count llama.cpp asked the backend for: every ``ggml_backend_buft_alloc_buffer``
  call on the CPU buffer type is recorded by wrapping that buffer type's ``alloc_buffer`` function
  (ggml/src/ggml-backend-impl.h ``struct ggml_backend_buffer_type``) for the duration of the load;
  a logged buffer is the recorded allocation whose size prints as the logged MiB.

The model is loaded through llama.cpp's C API without mmap (``load_mode`` NONE) so that its
weights are an allocated buffer (with mmap llama.cpp maps the file range instead, GGUF padding
included), and the context is built (``llama_init_from_model``) with one sequence per planned
sequence, ``n_ctx = batch × context``, ``n_batch = n_ubatch = --ubatch``, the planned cache type
and ``--flash-attn``. Nothing is generated: the buffers are the ones llama.cpp reserves at
start-up for the worst case.

Model and KV buffers are exact (tolerance 0); compute buffer and total within 5%.
"""

from __future__ import annotations

import ctypes
import re

from planner.errors import InputError

_CACHE_TYPES = {"fp16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
"""Planner KV format -> llama.cpp GGML_TYPE_* of --cache-type-k/-v."""

_LINE = re.compile(r"(?P<buft>\S+)\s+(?P<what>model|KV|compute|output)\s+buffer size\s*=\s*"
                   r"(?P<mib>[0-9.]+) MiB")

MEASURED_WITH = "0.3.36"
"""The llama-cpp-python release planner/engines/llamacpp.py was measured against (NOTES.md)."""

TOLERANCE = {"model_buffer": 0.0, "kv_buffer": 0.0, "compute_buffer": 0.05,
             "output_buffer": 0.0, "total": 0.05}


def _import():
    try:
        import llama_cpp  # heavy (loads libllama): imported only when verify runs
        from llama_cpp import _logger  # noqa: F401  (its log callback, restored after)
    except ImportError:
        raise InputError("planner verify --engine llama.cpp needs llama-cpp-python: "
                         "pip install llama-cpp-python") from None
    return llama_cpp


class _BuftIface(ctypes.Structure):
    # ggml/src/ggml-backend-impl.h struct ggml_backend_buffer_type_i (llama.cpp 0c1e570)
    _fields_ = [("get_name", ctypes.c_void_p), ("alloc_buffer", ctypes.c_void_p),
                ("get_alignment", ctypes.c_void_p), ("get_max_size", ctypes.c_void_p),
                ("get_alloc_size", ctypes.c_void_p), ("is_host", ctypes.c_void_p)]


class _Buft(ctypes.Structure):
    _fields_ = [("iface", _BuftIface), ("device", ctypes.c_void_p), ("context", ctypes.c_void_p)]


_ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_LOG = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _Recorder:
    """Log lines and CPU buffer allocations of llama.cpp, in the order they happen."""

    def __init__(self, llama_cpp):
        self.events: list[tuple[str, object]] = []
        self._llama_cpp = llama_cpp
        # The ggml that libllama itself loaded: a symbol looked up through libllama's handle
        # resolves in its dependencies (libggml-base); a second dlopen of libggml-base by path
        # could load another copy (wheels store the .so, .so.0 names as separate files).
        base = getattr(getattr(llama_cpp, "llama_cpp", None), "_lib", None)
        if base is None or not hasattr(base, "ggml_backend_cpu_buffer_type"):
            raise InputError("this llama-cpp-python does not expose libllama's ggml; reinstall "
                             "it (pip install --force-reinstall llama-cpp-python)")
        base.ggml_backend_cpu_buffer_type.restype = ctypes.POINTER(_Buft)
        self._buft = base.ggml_backend_cpu_buffer_type().contents
        self._orig_ptr = self._buft.iface.alloc_buffer
        self._orig = _ALLOC(self._orig_ptr)

        def alloc(buft, size):
            self.events.append(("alloc", int(size)))
            return self._orig(buft, size)

        def log(level, text, user):
            if text:
                self.events.append(("log", text.decode("utf-8", "replace")))

        self._alloc_cb, self._log_cb = _ALLOC(alloc), _LOG(log)

    def __enter__(self):
        self._buft.iface.alloc_buffer = ctypes.cast(self._alloc_cb, ctypes.c_void_p).value
        self._llama_cpp.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        self._buft.iface.alloc_buffer = self._orig_ptr
        from llama_cpp import _logger  # give the log back to llama-cpp-python

        self._llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        return False

    def buffers(self) -> dict[str, list[tuple[int, float, bool]]]:
        """Per kind (model, KV, compute, output): (bytes, logged MiB, exact) of each CPU buffer
        llama.cpp logged; exact when an allocation of that size was recorded before the line."""
        text = "".join(t for k, t in self.events if k == "log")
        out: dict[str, list[tuple[int, float, bool]]] = {}
        seen: list[int] = []
        claimed: set[int] = set()
        for kind, item in self.events:
            if kind == "alloc":
                seen.append(item)  # type: ignore[arg-type]
                continue
            for m in _LINE.finditer(item):  # type: ignore[arg-type]
                if not m.group("buft").startswith("CPU"):
                    continue
                mib = float(m.group("mib"))
                hit = next((i for i in range(len(seen) - 1, -1, -1) if i not in claimed
                            and f"{seen[i] / 2**20:.2f}" == m.group("mib")), None)
                if hit is None:
                    out.setdefault(m.group("what"), []).append((round(mib * 2**20), mib, False))
                else:
                    claimed.add(hit)
                    out.setdefault(m.group("what"), []).append((seen[hit], mib, True))
        if not out:
            raise InputError("llama.cpp printed no buffer sizes (its log said: "
                             f"{text.strip().splitlines()[-1] if text.strip() else 'nothing'})")
        return out


def _run(llama_cpp, path: str, n_ctx: int, ubatch: int, n_seq: int, gtype: int,
         flash_attn: bool, rec: _Recorder) -> dict:
    """Load the model and build a context through llama.cpp's C API (as llama-server does: no
    mmap here, see the module docstring), then free both; the buffers it logged."""
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise InputError(f"llama.cpp could not load {path} (see its log with LLAMA_LOG_LEVEL)")
    try:
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, ubatch, ubatch, n_seq
        cp.type_k = cp.type_v = gtype
        cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        ctx = llama_cpp.llama_init_from_model(model, cp)
        if not ctx:
            last = [t for k, t in rec.events if k == "log"][-1:] or ["no log"]
            raise InputError(f"llama.cpp could not create a context for {path}: "
                             f"{last[0].strip()}")
        llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(model)
    return rec.buffers()


def measure(args, src, est) -> dict:
    from planner.engines.llamacpp import LLAMACPP_COMMIT, split

    if src.kind != "gguf":
        raise InputError(f"planner verify --engine llama.cpp runs a GGUF file; {src.path} is a "
                         f"{src.kind} model (convert it with llama.cpp's convert_hf_to_gguf.py)")
    if est.pp > 1 or est.tp > 1:
        raise InputError("planner verify --engine llama.cpp measures one llama.cpp process on one "
                         "device; drop --tp/--pp")
    if est.device != "cpu":
        raise InputError("planner verify --engine llama.cpp measures llama.cpp's CPU backend: add "
                         "--device cpu")
    llama_cpp = _import()
    eng, wl = est.engine, est.workload
    ctype = _CACHE_TYPES.get(est.kv.key)
    if ctype is None:
        raise InputError(f"llama.cpp has no cache type for KV-cache {est.kv.key}; use "
                         f"{', '.join(_CACHE_TYPES)}")
    gtype = getattr(llama_cpp, f"GGML_TYPE_{ctype}")
    ubatch = eng.prefill_chunk_tokens
    n_ctx = wl.context * wl.batch
    rec = _Recorder(llama_cpp)
    with rec:
        found = _run(llama_cpp, src.path, n_ctx, ubatch, wl.batch, gtype, eng.flash_attn, rec)

    def line(kind: str, predicted: int) -> dict:
        items = found.get(kind, [])
        return {"predicted": predicted, "measured": sum(b for b, _, _ in items),
                "logged_mib": round(sum(m for _, m, _ in items), 2),
                "exact_bytes": bool(items) and all(x for _, _, x in items)}

    r = est.ranks[0]
    compute_p, output_p = split(r.detail["activations"])
    lines = {"model_buffer": line("model", r.weights), "kv_buffer": line("KV", r.kv_cache),
             "compute_buffer": line("compute", compute_p),
             "output_buffer": line("output", output_p)}
    lines["total"] = {"predicted": r.total,
                      "measured": sum(v["measured"] for v in lines.values())}
    for name, v in lines.items():
        v["tolerance"] = TOLERANCE[name]
    model_x, kv_x, compute_x, output_x = (lines[k].get("exact_bytes") for k in
                                          ("model_buffer", "kv_buffer", "compute_buffer",
                                           "output_buffer"))
    notes = [f"measured: llama.cpp's CPU buffers ({', '.join(sorted(found))}) as its log names "
             "them, in bytes from the allocations it made; the model planned from "
             "planner/engines/llamacpp.py (llama.cpp " + LLAMACPP_COMMIT[:7] + ")"]
    inexact = [k for k, x in (("model", model_x), ("KV", kv_x), ("compute", compute_x),
                              ("output", output_x)) if not x]
    if inexact:
        notes.append("from the log's MiB only (no allocation recorded): " + ", ".join(inexact))
    version = getattr(llama_cpp, "__version__", "?")
    if version != MEASURED_WITH:
        notes.append(f"the llama.cpp profile was read from and measured with llama-cpp-python "
                     f"{MEASURED_WITH} (llama.cpp {LLAMACPP_COMMIT[:7]}); this is {version}")
    return {"lines": lines,
            "engine_version": f"via llama-cpp-python {version}",
            "config": {"n_ctx": n_ctx, "n_ubatch": ubatch, "n_seq": wl.batch,
                       "cache_type": ctype.lower(),
                       "flash_attn": "on" if eng.flash_attn else "off"},
            "notes": notes}
