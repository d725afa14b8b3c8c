"""``planner quality``: measured quality per weight format on a real checkpoint, and the reports that
``planner recommend --quality-from`` ranks formats by.

The measuring runs in the runtime (``python -m runtime.eval``, a subprocess in its own process
group, as ``planner launch`` does): the planner never imports torch. It loads the checkpoint once
per format, quantizes it through ``kernels`` and reports, against the base (the checkpoint as
stored, dequantized to the activation dtype): perplexity with a sliding window, Δ perplexity, mean
KL divergence of the next-token distribution and top-1 agreement, next to the weight bytes the
planner predicts for that format (checked against the bytes the runtime holds).

Report (``--json`` / ``-o``), schema ``planner.quality/v1``::

    model, spec_hash, checkpoint, tokenizer, corpus, tokens, window, stride, kv_cache, device,
    base: {weights, perplexity, weight_bytes, ...}
    rows: [{weights, weight_bytes, weight_bytes_measured, perplexity, delta_perplexity_pct, kl,
            top1_agreement, tokens_scored, ...}]
    skipped: [{weights, reason}]    # formats the model cannot be stored in (e.g. group size)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

from planner.errors import InputError
from planner.units import seconds_arg, tokens_arg

DEFAULT_WEIGHTS = "fp16,int8,llm-int8,int4-g128,int4-g64,nf4,int4,absmax"
MAX_REPORT_BYTES = 16 << 20
DELTA_RESOLUTION_PCT = 0.1
"""--quality-from compares Δ perplexity rounded to this many percent (differences below it are
noise of a few thousand tokens), then KL."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quality", help="measured perplexity, KL and top-1 agreement per weight format on a real "
                        "checkpoint (runs the runtime)",
        description=__doc__.split("\n")[0])
    # One vocabulary with the other commands: --model as everywhere, --eval-* / --prompt /
    # --max-new-tokens as planner launch; the earlier names stay as aliases.
    p.add_argument("--model", "-m", "--checkpoint", "-c", dest="checkpoint", required=True, metavar="PATH",
                   help="the checkpoint: a GGUF file, safetensors file or HF folder (with its "
                        "tokenizer)")
    p.add_argument("--weights", "-w", default=DEFAULT_WEIGHTS,
                   help=f"comma-separated weight formats (default {DEFAULT_WEIGHTS}); formats the "
                        "model's shapes do not allow are listed as skipped")
    p.add_argument("--eval-text", default=None,
                   help="UTF-8 text file (default: the standard library's pydoc_data topics)")
    p.add_argument("--eval-tokens", "--tokens", dest="tokens", type=tokens_arg("--eval-tokens", 2), metavar="N",
                   default=4096, help="evaluate the first N tokens of the text (default 4096; 4k, 1m)")
    p.add_argument("--eval-window", "--window", dest="window", type=tokens_arg("--eval-window", 2), metavar="N",
                   default=512, help="sliding window in tokens (default 512)")
    p.add_argument("--eval-stride", "--stride", dest="stride", type=tokens_arg("--eval-stride"), metavar="N",
                   default=256, help="window stride in tokens (default 256)")
    p.add_argument("--kv-cache", default=None,
                   help="KV-cache format during the eval (default: the activation dtype)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json or GGUF to take the tokenizer from (default: the checkpoint's)")
    p.add_argument("--prompt", "--generate", dest="generate", default=None, metavar="PROMPT",
                   help="also continue PROMPT greedily with the base and every format")
    p.add_argument("--max-new-tokens", "--generate-tokens", dest="generate_tokens",
                   type=tokens_arg("--max-new-tokens"), metavar="N", default=24,
                   help="tokens --prompt generates (default 24)")
    p.add_argument("--timeout", type=seconds_arg("--timeout"), default=0,
                   help="stop the runtime after this many seconds (default 0: no limit)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("-o", "--output", default=None, help="also write the JSON report to this file")
    p.set_defaults(func=cmd_quality)


def cmd_quality(args: argparse.Namespace) -> int:
    from planner.launch import require_runtime, run_group
    from planner.precision import weight_format
    from planner.paths import resolve_model as resolve

    require_runtime("planner quality", ("tokenizers",))

    keys = [k.strip() for k in args.weights.split(",") if k.strip()]
    if not keys:
        raise InputError(f"--weights: empty format list {args.weights!r}")
    for k in keys:
        weight_format(k)  # unknown keys: InputError with a suggestion
    resolve(args.checkpoint)  # a missing or unreadable checkpoint fails here, without torch
    from planner.paths import check_input, check_output, exists

    if args.eval_text is not None:
        if not exists(args.eval_text):
            raise InputError(f"{args.eval_text}: no such eval text file")
        check_input(args.eval_text, "file", "text file")  # a FIFO would block the runtime
    if args.tokenizer is not None:
        check_input(args.tokenizer, "file", "tokenizer file")
    if args.output:
        check_output(args.output, force=True)  # a regular file or a new name; never a FIFO
    fd, tmp = tempfile.mkstemp(prefix="planner-quality-", suffix=".json")
    os.close(fd)
    try:
        cmd = [sys.executable, "-m", "runtime.eval", "--checkpoint", os.path.abspath(args.checkpoint),
               "--weights", ",".join(keys), "--tokens", str(args.tokens), "--window",
               str(args.window), "--stride", str(args.stride), "--device", args.device, "-o", tmp]
        for flag in ("eval_text", "tokenizer", "kv_cache"):
            v = getattr(args, flag)
            if v:
                cmd += [f"--{flag.replace('_', '-')}",
                        os.path.abspath(v) if flag != "kv_cache" else v]
        if args.generate:
            cmd += ["--generate", args.generate, "--generate-tokens", str(args.generate_tokens)]
        rc = run_group(cmd, args.timeout or None)
        if rc != 0:
            return rc
        with open(tmp) as f:
            doc = json.load(f)
    finally:
        os.unlink(tmp)
    if args.output:
        from planner.paths import atomic_write

        atomic_write(args.output, json.dumps(doc, indent=1), force=True)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(doc) + "\n")
    return 0


def render(doc: dict) -> str:
    """The quality table of a report."""
    from planner.units import fmt_bytes

    b = doc["base"]
    out = [f"{doc['model']} · {doc['checkpoint']}",
           f"text: {doc['corpus']} · first {doc['tokens']:,} tokens ({b['tokens_scored']:,} scored) "
           f"· window {doc['window']} stride {doc['stride']} · {doc['device']} · activations "
           f"{doc['activation_dtype']} · KV {doc['kv_cache']}",
           f"base: {b['weights']} = {b['note']}; perplexity {b['perplexity']:.3f}", ""]
    hdr = ["weights", "weight bytes", "size", "perplexity", "Δ vs base", "KL (nats)", "top-1 agree"]
    rows = [[f"{b['weights']} (base)", f"{b['weight_bytes']:,}", fmt_bytes(b["weight_bytes"]),
             f"{b['perplexity']:.3f}", "-", "-", "-"]]
    for r in doc["rows"]:
        rows.append([r["weights"], f"{r['weight_bytes']:,}", fmt_bytes(r["weight_bytes"]),
                     f"{r['perplexity']:.3f}", f"{r['delta_perplexity_pct']:+.2f}%",
                     f"{r['kl']:.4f}", f"{r['top1_agreement'] * 100:.1f}%"])
    from planner.cli import _table
    out.append(_table(hdr, rows, right=(1, 2, 3, 4, 5, 6)))
    mism = [r["weights"] for r in doc["rows"]
            if r.get("weight_bytes_measured") not in (None, r["weight_bytes"])]
    out.append("")
    out.append("weight bytes: the planner's prediction; the runtime's model holds "
               + ("exactly as many for every format" if not mism else
                  f"a different number for {', '.join(mism)} (see the JSON)"))
    for s in doc.get("skipped", []):
        out.append(f"skipped {s['weights']}: {s['reason']}")
    gens = [("base " + b["weights"], b.get("generation"))] + \
        [(r["weights"], r.get("generation")) for r in doc["rows"]]
    gens = [(k, g) for k, g in gens if g]
    if gens:
        out += ["", f"greedy continuation of {gens[0][1]['prompt']!r}:"]
        w = max(len(k) for k, _ in gens)
        out += [f"  {k:<{w}}  {g['text']!r}" for k, g in gens]
    return "\n".join(out)


# -- reports as input (planner recommend --quality-from) ---------------------------------------

def _num(v, where: str, field: str, minimum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{where}: field {field} must be a finite number, got {v!r}")
    if minimum is not None and v < minimum:
        raise InputError(f"{where}: field {field} must be >= {minimum}, got {v!r}")
    return float(v)


def load_report(path: str) -> dict:
    """Read and check a quality report; every error names the file and the field."""
    from planner.paths import exists, read_bytes

    if not exists(path):
        raise InputError(f"{path}: no such quality report")
    raw = read_bytes(path, MAX_REPORT_BYTES, "quality report")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: not a JSON quality report ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a quality report is a JSON object, got {type(doc).__name__}")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise InputError(f"{path}: field model must be the model's name (a string)")
    base = doc.get("base")
    if not isinstance(base, dict):
        raise InputError(f"{path}: field base must be an object with weights and perplexity")
    if not isinstance(base.get("weights"), str):
        raise InputError(f"{path}: field base.weights must be a format key (a string)")
    _num(base.get("perplexity"), path, "base.perplexity", 1.0)
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise InputError(f"{path}: field rows must be a list")
    for i, r in enumerate(rows):
        f = f"rows[{i}]"
        if not isinstance(r, dict):
            raise InputError(f"{path}: field {f} must be an object")
        if not isinstance(r.get("weights"), str):
            raise InputError(f"{path}: field {f}.weights must be a format key (a string)")
        _num(r.get("perplexity"), path, f"{f}.perplexity", 1.0)
        _num(r.get("kl"), path, f"{f}.kl", 0.0)
        _num(r.get("top1_agreement"), path, f"{f}.top1_agreement", 0.0)
        if "weight_bytes" in r and (isinstance(r["weight_bytes"], bool)
                                    or not isinstance(r["weight_bytes"], int)):
            raise InputError(f"{path}: field {f}.weight_bytes must be an integer")
    if "spec_hash" in doc and not isinstance(doc["spec_hash"], str):
        raise InputError(f"{path}: field spec_hash must be a string")
    return doc


def measured_order(doc: dict, spec, path: str) -> dict[str, tuple]:
    """Format key -> sort key (Δ perplexity rounded to DELTA_RESOLUTION_PCT, KL) for ``spec``'s
    measured formats; the report's base counts as measured with no loss. InputError when the
    report measured another model (neither its spec hash nor its name match)."""
    from planner.plan import spec_hash
    from planner.precision import weight_format

    same = doc.get("spec_hash") == spec_hash(spec) or doc["model"] == spec.name
    if not same:
        raise InputError(f"{path}: this quality report measured {doc['model']!r}, not "
                         f"{spec.name!r} (neither the spec hash nor the name match); measure this "
                         f"model with planner quality --checkpoint ...")
    base_ppl = float(doc["base"]["perplexity"])
    order: dict[str, tuple] = {}
    for i, r in enumerate(doc["rows"]):
        try:
            key = weight_format(r["weights"]).key
        except InputError as e:
            raise InputError(f"{path}: field rows[{i}].weights: {e}") from None
        delta = (float(r["perplexity"]) / base_ppl - 1) * 100
        order[key] = (round(delta / DELTA_RESOLUTION_PCT), float(r["kl"]))
    try:
        base_key = weight_format(doc["base"]["weights"]).key
    except InputError as e:
        raise InputError(f"{path}: field base.weights: {e}") from None
    order.setdefault(base_key, (0, 0.0))
    return order
