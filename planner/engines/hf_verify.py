"""``planner verify --engine transformers``: run transformers' ``generate`` and measure it.

The model is loaded with transformers itself in the requested dtype (``--weights fp32|bf16|fp16``):
a folder with a config.json (random weights from the config when it holds no checkpoint: memory
does not depend on the values), a safetensors folder, or a GGUF (``from_pretrained(folder,
gguf_file=...)``, which dequantizes it; needs the ``gguf`` package). It runs ``generate(
max_new_tokens=new, min_new_tokens=new, do_sample=False)`` on random prompt ids of the workload's
shape, with the attention implementation of ``--attention``, and measures live tensor bytes the
way ``planner launch`` does on the CPU (runtime/measure.py): every tensor storage an operator
creates during ``generate`` is counted from its creation until it is freed (a TorchDispatchMode
sees each op's outputs; a weak reference on each new storage sees it die), and the peak of that
count is taken. Lines:

- ``weights``: bytes of the model's parameters (distinct storages: a tied LM head counts once).
  Exact.
- ``kv_cache``: bytes of the K/V tensors the DynamicCache holds when ``generate`` returns. Exact:
  the cache holds prompt + new - 1 tokens (the last sampled token is never fed back), a sliding
  layer the last window - 1 of them (the planner predicts both). The storage behind a sliding
  layer's view beyond that is counted in the total, hence in the activations.
- ``total``: parameters and buffers, plus the peak of what ``generate`` allocated. ±10%.
- ``activations``: total - weights - kv_cache (what the peak holds beyond the weights and the
  final cache: the transients of the worst step and generate's bookkeeping). ±10%.
"""

from __future__ import annotations

import os

from planner.errors import InputError

TOLERANCE = 0.10
_DTYPES = ("fp32", "bf16", "fp16")


def _imports():
    try:
        import torch
        import transformers
    except ImportError:
        raise InputError("planner verify --engine transformers needs torch and transformers "
                         "installed (pip install torch transformers)") from None
    return torch, transformers


class _LiveBytes:
    """Peak bytes of tensor storages created while active (a TorchDispatchMode)."""

    def __init__(self, torch, device):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from torch.utils.weak import WeakIdKeyDictionary
        import weakref

        outer = self
        self.live = 0
        self.peak = 0
        self.device = device
        self._seen = WeakIdKeyDictionary()
        self._trace = os.environ.get("PLANNER_HF_TRACE") == "1"
        self.peak_live: list = []

        def freed(n, _ref):
            outer.live -= n

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if not isinstance(t, torch.Tensor) or t.device.type != device.type:
                        continue
                    st = t.untyped_storage()
                    if st in outer._seen:
                        continue
                    n = st.nbytes()
                    outer._seen[st] = (weakref.ref(st, lambda r, n=n: freed(n, r)), n,
                                       f"{func} {tuple(t.shape)} {t.dtype}" if outer._trace
                                       else "")
                    outer.live += n
                if outer.live > outer.peak:
                    outer.peak = outer.live
                    if outer._trace:
                        outer.peak_live = sorted(((v[1], v[2]) for v in outer._seen.values()),
                                                 reverse=True)
                return out

        self.mode = Mode()


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        st = t.untyped_storage()
        if st.data_ptr() in seen:
            continue
        seen.add(st.data_ptr())
        total += st.nbytes()
    return total


def _load(torch, transformers, src, dtype, attention):
    """The model as transformers loads it from the --model path."""
    path = src.path
    kw = {"dtype": dtype, "attn_implementation": attention}
    auto = transformers.AutoModelForCausalLM
    try:
        if src.kind == "gguf":
            try:
                import gguf  # noqa: F401 (transformers' GGUF loader needs it)
            except ImportError:
                raise InputError("loading a GGUF with transformers needs the gguf package "
                                 "(pip install gguf)") from None
            return auto.from_pretrained(os.path.dirname(os.path.abspath(path)) or ".",
                                        gguf_file=os.path.basename(path), **kw)
        if src.kind == "catalog":
            raise InputError(f"planner verify --engine transformers needs a local model: a "
                             f"folder with config.json, a safetensors checkpoint or a GGUF "
                             f"(got the catalog name {path!r})")
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        if src.kind == "config":
            cfg = transformers.AutoConfig.from_pretrained(folder)
            cfg._attn_implementation = attention
            return auto.from_config(cfg, dtype=dtype, attn_implementation=attention)
        return auto.from_pretrained(folder, **kw)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"transformers could not load {path}: {first}") from None


def measure(args, src, est) -> dict:
    torch, transformers = _imports()
    if est.weights.key not in _DTYPES or getattr(args, "weights", "") == "stored":
        raise InputError(f"planner verify --engine transformers loads the model in fp32, bf16 or "
                         f"fp16 (--weights); got {args.weights}")
    if est.tp != 1 or est.pp != 1:
        raise InputError("planner verify --engine transformers runs one process (--tp 1 --pp 1)")
    wl = est.workload
    if wl.new_tokens < 1:
        raise InputError("planner verify --engine transformers needs --new-tokens of at least 1")
    if est.kv.key != est.weights.key and est.kv.key in _DTYPES:
        raise InputError(f"transformers caches K/V in the model dtype: use --kv-cache "
                         f"{est.weights.key} with --weights {est.weights.key}")
    if est.kv.key not in _DTYPES:
        raise InputError(f"planner verify --engine transformers measures the DynamicCache "
                         f"(--kv-cache {est.weights.key}); got {est.kv.key}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no CUDA device; use --device cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[est.weights.key]
    attention = est.engine.attention
    model = _load(torch, transformers, src, dtype, attention).to(device).eval()
    weights = _storage_bytes(list(model.parameters()))
    fixed = _storage_bytes(list(model.parameters()) + list(model.buffers()))
    vocab = model.config.get_text_config().vocab_size
    tracker = _LiveBytes(torch, device)
    for t in [*model.parameters(), *model.buffers()]:  # views of weights allocate nothing
        tracker._seen[t.untyped_storage()] = (None, 0, "")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (wl.batch, wl.prompt_tokens), generator=gen)
    with torch.inference_mode(), tracker.mode:
        ids = ids.to(device)
        mask = torch.ones_like(ids)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=wl.new_tokens,
                             min_new_tokens=wl.new_tokens, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0)
    cache = out.past_key_values
    # the tensors the cache holds (a sliding layer's view: its window - 1 tokens); storage behind
    # a view beyond that is in the total, so in the activations line
    kv = sum(t.numel() * t.element_size() for layer in cache.layers
             for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
             if isinstance(t, torch.Tensor))
    total = fixed + tracker.peak
    r = est.ranks[0]
    lines = {
        "weights": {"predicted": r.weights, "measured": weights, "tolerance": 0.0},
        "kv_cache": {"predicted": r.kv_cache, "measured": kv, "tolerance": 0.0},
        "activations": {"predicted": r.activations, "measured": total - weights - kv,
                        "tolerance": TOLERANCE},
        "total": {"predicted": r.total - r.overhead, "measured": total, "tolerance": TOLERANCE},
    }
    notes = [
        "measured: live tensor storages during generate() (a TorchDispatchMode counting every "
        "storage an op creates until it is freed), peak taken; parameters and buffers added",
        "kv_cache: the DynamicCache's K/V tensors when generate returns (prompt + new - 1 "
        "tokens; a sliding layer's last window - 1)",
        "activations: measured total - weights - kv_cache",
    ]
    if r.overhead:
        notes.append(f"total excludes the predicted overhead ({r.overhead:,} B: CUDA context, "
                     f"workspaces), which tensor accounting cannot see")
    if est.engine.version and est.engine.version != f"transformers {transformers.__version__}":
        notes.append(f"the profile describes {est.engine.version}; transformers "
                     f"{transformers.__version__} is installed")
    if os.environ.get("PLANNER_HF_TRACE") == "1":
        notes += [f"peak: {n:,} {what}" for n, what in tracker.peak_live[:25]]
    return {"lines": lines, "engine_version": transformers.__version__,
            "config": {"attention": attention, "dtype": est.weights.key,
                       "device": device.type, "torch": torch.__version__.split("+")[0]},
            "notes": notes}
