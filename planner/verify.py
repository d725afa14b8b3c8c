"""``planner verify``: the planner's prediction against the engine a user runs, on their machine.

The engine is run (llama.cpp through llama-cpp-python, transformers' ``generate``) on the user's
model and workload, and what the engine itself allocated is compared line by line with
:func:`planner.memory.estimate` for the same engine profile and options: the same table and JSON as
``planner launch``, exit 0 when every line is within its tolerance, 1 when one is not, 2 for bad
input or an engine that is not installed.

Each engine's measuring lives in its own module (``MEASURERS``) with one function::

    measure(args, src, est) -> {"lines": {name: {"predicted": int, "measured": int,
                                                  "tolerance": float}},
                                "engine_version": str, "config": {...}, "notes": [str, ...]}

``tolerance`` 0 means exact to the byte; the module states where each measured figure comes from.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from planner.errors import InputError

MEASURERS = {"llama.cpp": "planner.engines.llamacpp_verify",
             "transformers": "planner.engines.hf_verify"}
"""Engine key -> the module that runs it and measures what it allocated."""


def add_parser(sub) -> None:
    from planner.cli import _add_model_args, _add_workload_args

    v = sub.add_parser("verify", help="run the engine you use (llama.cpp, transformers) on this "
                                      "machine and compare its memory with the prediction")
    _add_model_args(v)
    _add_workload_args(v)
    # llama.cpp plans a GGUF as stored unless --weights says otherwise; the engine runs here, on
    # this machine's CPU unless --device cuda is asked for
    v.set_defaults(weights=None, device="cpu")
    v.add_argument("--json", action="store_true", help="one JSON document on stdout")
    v.add_argument("--report", default=None, metavar="PATH", help="also write the JSON here")
    v.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from planner.cli import _workload, engine_of, weights_of
    from planner.memory import estimate
    from planner.paths import resolve_model

    if args.engine not in MEASURERS:
        raise InputError(f"planner verify runs {', '.join(MEASURERS)}; for this project's runtime "
                         f"use planner launch (got --engine {args.engine})")
    eng = engine_of(args)
    if args.report:
        from planner.paths import check_output

        check_output(args.report, force=True)
    src = resolve_model(args.model)
    weights = args.weights
    if weights is None:  # llama.cpp runs the GGUF's own bytes: plan them as stored
        weights = "stored" if (src.kind == "gguf" and args.engine == "llama.cpp") else "fp16"
    weights, stored = weights_of(weights, src)
    est = estimate(src.spec, weights, args.kv_cache, args.tp, args.pp, _workload(args), eng,
                   args.device, args.quantize_lm_head, stored)
    result = importlib.import_module(MEASURERS[args.engine]).measure(args, src, est)
    for line in result["lines"].values():
        p, m, tol = line["predicted"], line["measured"], line["tolerance"]
        line["ok"] = bool(abs(m - p) <= tol * p if tol else m == p)
    doc = {"ok": all(l["ok"] for l in result["lines"].values()), "engine": args.engine,
           "engine_version": result.get("engine_version", ""), "model": src.spec.name,
           "weights": "stored" if stored is not None else est.weights.key,
           "kv_cache": est.kv.key, "workload": {"batch": est.workload.batch,
                                                "prompt_tokens": est.workload.prompt_tokens,
                                                "new_tokens": est.workload.new_tokens},
           "config": result.get("config", {}), "lines": result["lines"],
           "notes": result.get("notes", [])}
    if args.report:  # checked before the engine runs (below), written atomically after
        from planner.paths import atomic_write

        atomic_write(args.report, json.dumps(doc, indent=2) + "\n", force=True)
    sys.stdout.write((json.dumps(doc, indent=2) if args.json else render(doc)) + "\n")
    return 0 if doc["ok"] else 1


def render(doc: dict) -> str:
    w = doc["workload"]
    cfg = ", ".join(f"{k} {v}" for k, v in doc["config"].items())
    out = [f"{doc['model']} · {doc['engine']} {doc['engine_version']} · weights {doc['weights']} · "
           f"KV {doc['kv_cache']} · batch {w['batch']} · prompt {w['prompt_tokens']} + new "
           f"{w['new_tokens']}" + (f" · {cfg}" if cfg else ""), ""]
    hdr = f"{'line':<16} {'predicted':>16} {'measured':>16} {'diff':>8}  {'tolerance':<9} result"
    out += [hdr, "-" * len(hdr)]
    for name, l in doc["lines"].items():
        p, m = l["predicted"], l["measured"]
        diff = f"{(m - p) / p * 100:+.1f}%" if p else ("0.0%" if m == p else "n/a")
        tol = "exact" if not l["tolerance"] else f"±{l['tolerance'] * 100:.0f}%"
        out.append(f"{name:<16} {p:>16,} {m:>16,} {diff:>8}  {tol:<9} "
                   f"{'PASS' if l['ok'] else 'FAIL'}")
    out += [""] + [f"note: {n}" for n in doc["notes"]]
    out.append("result: " + ("PASS" if doc["ok"] else "FAIL (a line missed its tolerance)"))
    return "\n".join(out)
