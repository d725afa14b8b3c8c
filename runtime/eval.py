"""Measured quality per weight format: perplexity, KL divergence from the base model and top-1
agreement, on a real checkpoint with its own tokenizer.

``python -m runtime.eval --checkpoint PATH --weights fp16,int8,...`` (what ``planner quality`` runs)
and ``python -m runtime PLAN --eval`` (what ``planner launch PLAN --eval`` runs) both come here.

- **base**: the checkpoint as stored, dequantized to the activation dtype (bf16 on CPU, fp16 on CUDA;
  a GGUF's quantized tensors are dequantized by ``gguf``): the reference every format is compared
  with. Its logits over the scored positions are kept in memory in the activation dtype with an
  fp32 logsumexp per position (its exact log-probabilities): positions × vocab × 2 bytes, 4,095 ×
  49,152 × 2 = 403 MB for SmolLM2 at the default slice.
- **formats**: the same checkpoint streamed again and quantized tensor by tensor into each format
  through ``kernels`` (``runtime.weights.materialize_checkpoint``), one model alive at a time.
- **perplexity**: exp(mean NLL) over the first ``tokens`` tokens of the text, with a sliding window
  (HF's recipe): windows of ``window`` tokens every ``stride`` tokens, each scoring only the targets
  the previous windows did not, so every target after the first window sees at least
  ``window - stride`` tokens of context. Each window is a fresh sequence (positions from 0).
- **KL**: mean over scored positions of KL(P_base ‖ P_format) in nats; **top-1 agreement**: the share
  of positions where the format's most likely next token is the base's.

No MemTracker here (it dispatches every op through Python); logits are computed for the scored
positions of a window only in this mode (the runtime's decode path keeps the last position only).
TP 1, one process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

DEFAULT_TOKENS = 4096
DEFAULT_WINDOW = 512
DEFAULT_STRIDE = 256
DEFAULT_WEIGHTS = "fp16,int8,llm-int8,int4-g128,int4-g64,nf4,int4,absmax"
GENERATE_TOKENS = 24


class EvalError(Exception):
    """A user-facing error of the eval (one line; exit 2)."""


# -- corpus ------------------------------------------------------------------------------------

def default_corpus() -> tuple[str, str]:
    """The English documentation text every CPython ships: ``pydoc_data.topics.topics`` joined in
    sorted key order (deterministic)."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text, f"pydoc_data.topics (Python {sys.version_info.major}.{sys.version_info.minor}, " \
                 f"{len(topics)} topics sorted by key)"


def read_corpus(path: str | None) -> tuple[str, str]:
    if path is None:
        return default_corpus()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise EvalError(f"{path}: cannot read the eval text ({e.strerror or e})") from None
    if b"\x00" in raw:
        raise EvalError(f"{path}: looks binary (it holds NUL bytes); the eval text must be UTF-8 "
                        "text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); the eval "
                        "text must be UTF-8") from None
    if not text.strip():
        raise EvalError(f"{path}: the eval text is empty")
    return text, os.path.abspath(path)


def corpus_tokens(tok, text: str, n: int, where: str) -> list[int]:
    """The first ``n`` tokens of the text (tokenizing a prefix long enough, not the whole file)."""
    chars = max(4096, n * 8)
    while True:
        ids = tok.encode(text[:chars])
        if len(ids) > n or chars >= len(text):
            break
        chars *= 2
    ids = ids[:n]
    if len(ids) < 2:
        raise EvalError(f"{where}: the eval text has {len(ids)} token(s); at least 2 are needed")
    return ids


# -- model -------------------------------------------------------------------------------------

def act_dtype(device, weights: str):
    import torch
    if weights == "fp32":
        return torch.float32
    # CPU: bf16 (fp16 matmuls have no fast CPU kernel here; see runtime.cli._act_dtype)
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def load_model(spec, src, key: str, act, device):
    """The TP-1 model with its quantized linears in format ``key``, loaded from ``src``."""
    from runtime.model import Layout, build, move_to
    from runtime.weights import materialize_checkpoint
    t0 = time.perf_counter()
    model = build(spec, Layout(tp=1, rank=0, weights=key, act_dtype=act))
    materialize_checkpoint(model, src)
    move_to(model, device)
    return model, time.perf_counter() - t0


def hidden_states(model, ids, cache):
    """The final hidden states [s, h] (before the last norm) of a fresh sequence ids [1, s]."""
    import torch.nn.functional as F
    spec, m = model.spec, model.model
    s = ids.shape[1]
    rope = model.rope(0, s, model.lay.act_dtype)
    if rope is not None:
        rope = tuple(r.to(ids.device) for r in rope)
    if hasattr(model, "embed"):  # token + position embeddings (+ BLOOM's embedding norm)
        h = model.embed(ids, 0)
    else:
        h = m.embed_tokens(ids)
        if spec.learned_positions:
            import torch
            p = torch.arange(spec.position_offset, spec.position_offset + s, device=ids.device)
            h.add_(F.embedding(p, m.embed_positions))
    for block in m.layers:
        block(h, cache, 0, rope)
    return h[0]


def windows(n: int, window: int, stride: int):
    """(begin, end, first target) of each window over n tokens; targets 1..n-1 each scored once."""
    prev_end, begin = 0, 0
    while True:
        end = min(begin + window, n)
        lo = max(prev_end, begin + 1)
        if lo < end:
            yield begin, end, lo
        prev_end = end
        if end == n:
            return
        begin += stride


def score(model, tokens: list[int], window: int, stride: int, kv: str, device, base=None) -> dict:
    """Sliding-window NLL of ``tokens``; with ``base`` (the base's score dict) also KL and top-1
    agreement against it. Without it, the result keeps its log-probs and top-1 for later rows."""
    import torch
    from runtime.model import KVCache
    n = len(tokens)
    ids = torch.tensor(tokens, dtype=torch.long, device=device)
    cache = KVCache(model.spec, kv, 1, 1, min(window, n), device)
    keep = base is None
    if keep:  # the base's raw logits in their own dtype + an fp32 logsumexp of the capped ones
        logits_all = torch.empty(n - 1, model.spec.vocab, dtype=model.lay.act_dtype, device=device)
        lse_all = torch.empty(n - 1, 1, dtype=torch.float32, device=device)
        top_all = torch.empty(n - 1, dtype=torch.long, device=device)
    nll = kl = 0.0
    agree = scored = 0
    t0 = time.perf_counter()
    for begin, end, lo in windows(n, window, stride):
        h = hidden_states(model, ids[begin:end].unsqueeze(0), cache)
        rows = h[lo - begin - 1:end - begin - 1]
        del h
        raw = model.head_raw(rows)[:, :model.spec.vocab]
        logits = model.capped(raw)  # fp32, as the greedy step sees them (final softcap)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        logq = logits.sub_(lse)
        tgt = ids[lo:end]
        nll -= float(logq.gather(1, tgt.unsqueeze(1)).sum())
        top = logq.argmax(dim=-1)
        sl = slice(lo - 1, end - 1)
        if keep:
            logits_all[sl] = raw
            lse_all[sl] = lse
            top_all[sl] = top
        else:
            # capped() copies: the base's stored logits stay as they are for the next format
            p = model.capped(base["_logits"][sl]).sub_(base["_lse"][sl])
            kl += float((p.exp() * (p - logq)).sum())
            agree += int((top == base["_top1"][sl]).sum())
        scored += end - lo
        del logq, rows, raw, lse
    out = {"tokens_scored": scored, "nll": nll / scored, "perplexity": math.exp(nll / scored),
           "seconds": time.perf_counter() - t0}
    if keep:
        out["_logits"], out["_lse"], out["_top1"] = logits_all, lse_all, top_all
        out["kl"], out["top1_agreement"] = 0.0, 1.0
    else:
        out["kl"], out["top1_agreement"] = kl / scored, agree / scored
    return out


def generate(model, tok, prompt: str, new_tokens: int, kv: str, device) -> dict:
    """Greedy continuation of ``prompt`` through the runtime's own decode path (Model.forward)."""
    import torch
    from runtime.model import KVCache
    ids = tok.encode(prompt)
    if not ids:
        raise EvalError("the prompt is empty")
    cache = KVCache(model.spec, kv, 1, 1, len(ids) + new_tokens, device)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out: list[int] = []
    pos = 0
    for _ in range(new_tokens):
        nxt = model(x, cache, pos)
        pos += x.shape[1]
        t = int(nxt[0])
        if tok.eos_id is not None and t == tok.eos_id:
            break
        out.append(t)
        x = nxt.view(1, 1)
    return {"prompt": prompt, "ids": out, "text": tok.decode(out)}


# -- the whole run -----------------------------------------------------------------------------

def run(spec, checkpoint: str, formats: list[str], *, text_path: str | None = None,
        tokens: int = DEFAULT_TOKENS, window: int = DEFAULT_WINDOW, stride: int = DEFAULT_STRIDE,
        kv: str | None = None, device_name: str = "cpu", tokenizer: str | None = None,
        prompt: str | None = None, new_tokens: int = GENERATE_TOKENS, log=None) -> dict:
    """Evaluate the base and every format; the report document (see planner.quality)."""
    import torch
    from planner.errors import PlannerError
    from planner.memory import Workload, estimate
    from planner.plan import spec_hash
    from planner.precision import weight_format
    from runtime import tokenizer as T
    from runtime import weights as W
    from runtime.measure import model_bytes
    from runtime.model import RuntimeError_, check_buildable

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if window < 2:
        raise EvalError(f"--eval-window must be at least 2, got {window}")
    if window > spec.max_context:
        raise EvalError(f"--eval-window {window} exceeds {spec.name}'s max context "
                        f"{spec.max_context}")
    if not 1 <= stride <= window:
        raise EvalError(f"--eval-stride must be between 1 and the window ({window}), got {stride}")
    if tokens < 2:
        raise EvalError(f"--eval-tokens must be at least 2, got {tokens}")
    try:
        check_buildable(spec, min(window, tokens))
    except RuntimeError_ as e:
        raise EvalError(str(e)) from None
    text, corpus = read_corpus(text_path)
    try:
        tok = T.load(checkpoint, tokenizer)
        T.check_vocab(tok, spec.vocab, spec.name)
    except T.TokenizerError as e:
        raise EvalError(str(e)) from None
    ids = corpus_tokens(tok, text, tokens, corpus)

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda but CUDA is not available here")
    torch.set_grad_enabled(False)
    base_key = "bf16" if device.type == "cpu" else "fp16"
    act = act_dtype(device, base_key)
    kv = kv or base_key
    try:
        src = W.open_checkpoint(checkpoint, spec)
    except RuntimeError_ as e:
        raise EvalError(str(e)) from None

    def predicted(key: str) -> int:
        est = estimate(spec, key, kv, 1, 1, Workload(1, min(window, len(ids)), 0), "runtime",
                       device.type)
        return est.ranks[0].weights

    stored = getattr(getattr(src, "reader", None), "tensors", None)
    stored_kinds = sorted({t.tensor_type.name for t in stored}) if stored else None
    doc = {"schema": "planner.quality/v1", "model": spec.name, "spec_hash": spec_hash(spec),
           "checkpoint": os.path.abspath(checkpoint), "tokenizer": tok.source,
           "corpus": corpus, "tokens": len(ids), "window": min(window, len(ids)),
           "stride": stride, "kv_cache": kv, "device": device.type,
           "activation_dtype": str(act).replace("torch.", "")}
    try:
        log(f"base ({base_key}): loading {checkpoint}")
        model, load_s = load_model(spec, src, base_key, act, device)
        log(f"base: loaded in {load_s:.1f} s; scoring {len(ids):,} tokens")
        base = score(model, ids, window, stride, kv, device)
        stored_note = (f"the checkpoint's {'/'.join(stored_kinds)} tensors dequantized to {base_key}"
                       if stored_kinds else f"the checkpoint's tensors converted to {base_key}")
        doc["base"] = {"weights": base_key, "perplexity": base["perplexity"], "nll": base["nll"],
                       "weight_bytes": predicted(base_key), "weight_bytes_measured": model_bytes(model),
                       "tokens_scored": base["tokens_scored"], "seconds": round(base["seconds"], 2),
                       "load_seconds": round(load_s, 2), "note": stored_note}
        if prompt:
            doc["base"]["generation"] = generate(model, tok, prompt, new_tokens, kv, device)
        log(f"base: perplexity {base['perplexity']:.3f} in {base['seconds']:.1f} s")
        del model
        rows, skipped = [], []
        for key in formats:
            try:
                fmt = weight_format(key)
                pred = predicted(fmt.key)
            except PlannerError as e:
                reason = str(e)
                if key.startswith("int4-g"):  # name a group size this model's shapes allow
                    for g in (128, 64, 32):
                        alt = key.replace(key.split("-")[1], f"g{g}", 1)
                        try:
                            predicted(alt)
                        except PlannerError:
                            continue
                        reason += f" ({alt} fits)"
                        break
                skipped.append({"weights": key, "reason": reason})
                log(f"{key}: skipped ({reason})")
                continue
            if fmt.key == base_key:
                model_b = doc["base"]["weight_bytes_measured"]
                r = dict(base, kl=0.0, top1_agreement=1.0, seconds=0.0)
                load_s = 0.0
                gen = doc["base"].get("generation")
            else:
                model, load_s = load_model(spec, src, fmt.key, act, device)
                model_b = model_bytes(model)
                r = score(model, ids, window, stride, kv, device, base=base)
                gen = generate(model, tok, prompt, new_tokens, kv, device) if prompt else None
                del model
            row = {"weights": fmt.key, "weight_bytes": pred, "weight_bytes_measured": model_b,
                   "perplexity": r["perplexity"], "nll": r["nll"],
                   "delta_perplexity_pct": (r["perplexity"] / base["perplexity"] - 1) * 100,
                   "kl": r["kl"], "top1_agreement": r["top1_agreement"],
                   "tokens_scored": r["tokens_scored"], "seconds": round(r["seconds"], 2),
                   "load_seconds": round(load_s, 2)}
            if gen is not None:
                row["generation"] = gen
            rows.append(row)
            log(f"{fmt.key}: perplexity {r['perplexity']:.3f} ({row['delta_perplexity_pct']:+.2f}%), "
                f"KL {r['kl']:.4f}, top-1 {r['top1_agreement'] * 100:.1f}% in {r['seconds']:.1f} s"
                f" + load {load_s:.1f} s")
    except RuntimeError_ as e:
        raise EvalError(str(e)) from None
    doc["rows"] = rows
    doc["skipped"] = skipped
    return doc


# -- command line (python -m runtime.eval) ------------------------------------------------------

def add_eval_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The eval options (``prefix`` = "eval-" for ``python -m runtime PLAN --eval``)."""
    p.add_argument(f"--{prefix}text" if prefix else "--eval-text", dest="eval_text", default=None,
                   help="UTF-8 text file to evaluate on (default: the standard library's "
                        "pydoc_data topics)")
    p.add_argument(f"--{prefix}tokens" if prefix else "--tokens", dest="eval_tokens", type=int,
                   default=DEFAULT_TOKENS,
                   help=f"evaluate the first N tokens of the text (default {DEFAULT_TOKENS})")
    p.add_argument(f"--{prefix}window", dest="eval_window", type=int, default=DEFAULT_WINDOW,
                   help=f"sliding-window length in tokens (default {DEFAULT_WINDOW})")
    p.add_argument(f"--{prefix}stride", dest="eval_stride", type=int, default=DEFAULT_STRIDE,
                   help=f"sliding-window stride in tokens (default {DEFAULT_STRIDE})")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json or GGUF to take the tokenizer from (default: the checkpoint's)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.eval",
                                description="quality per weight format (planner quality)")
    p.add_argument("--checkpoint", required=True, help="GGUF file, safetensors file or HF folder")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="comma-separated format keys")
    p.add_argument("--kv-cache", default=None, help="KV-cache format (default: the activation dtype)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--eval-text", dest="eval_text", default=None)
    p.add_argument("--tokens", dest="eval_tokens", type=int, default=DEFAULT_TOKENS)
    p.add_argument("--window", dest="eval_window", type=int, default=DEFAULT_WINDOW)
    p.add_argument("--stride", dest="eval_stride", type=int, default=DEFAULT_STRIDE)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--generate", default=None, metavar="PROMPT",
                   help="also continue this prompt greedily with every format")
    p.add_argument("--generate-tokens", type=int, default=GENERATE_TOKENS)
    p.add_argument("-o", "--output", required=True, help="write the JSON report here")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from planner.errors import PlannerError
    from planner.sources import resolve
    try:
        spec = resolve(args.checkpoint).spec
        formats = [k.strip() for k in args.weights.split(",") if k.strip()]
        doc = run(spec, args.checkpoint, formats, text_path=args.eval_text,
                  tokens=args.eval_tokens, window=args.eval_window, stride=args.eval_stride,
                  kv=args.kv_cache, device_name=args.device, tokenizer=args.tokenizer,
                  prompt=args.generate, new_tokens=args.generate_tokens)
    except (EvalError, PlannerError) as e:
        print(f"runtime: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"runtime: out of memory during the eval ({e})", file=sys.stderr)
        return 1
    with open(args.output, "w") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
