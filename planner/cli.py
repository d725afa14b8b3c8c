"""The ``planner`` command line.

Every command prints a table by default and one JSON document on stdout with ``--json`` (bytes as
integers). Errors are one line on stderr: exit 2 for bad input, 1 for "does not fit", 0 for success.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from planner import __version__
from planner.errors import DoesNotFit, InfeasibleError, InputError, PlannerError
from planner.units import fmt_bytes, fmt_count, parse_tokens, tokens_arg

from planner.objectives import DEFAULT_OBJECTIVE, OBJECTIVES


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


def _tokens(what: str, minimum: int = 1) -> Callable[[str], int]:
    return tokens_arg(what, minimum)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True,
                   help="catalog name or alias (planner models), or a path to a config.json, a "
                        "folder, a safetensors checkpoint or a GGUF file")


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", "-w", default="fp16",
                   help="weight format key (fp16, bf16, fp8, int8, int4, int4-g128, int4-g128-zp, "
                        "nf4, llm-int8, absmax, GGML q4_k… for llama.cpp), or 'stored' for a "
                        "checkpoint's own bytes as its headers give them; default fp16")
    p.add_argument("--kv-cache", default="fp16", help="KV-cache format: fp16, bf16, fp8, int8, int4")
    p.add_argument("--tp", type=_tokens("--tp"), default=1, help="tensor-parallel degree")
    p.add_argument("--pp", type=_tokens("--pp"), default=1, help="pipeline-parallel degree")
    p.add_argument("--batch", "-b", type=_tokens("--batch"), default=1, help="sequences per batch")
    p.add_argument("--prompt-tokens", type=_tokens("--prompt-tokens"), default=None,
                   help="prompt tokens per sequence (default 2048, or --context minus new tokens)")
    p.add_argument("--new-tokens", type=_tokens("--new-tokens", 0), default=None,
                   help="generated tokens per sequence (default 0 with --context, else 256)")
    p.add_argument("--context", type=_tokens("--context"), default=None,
                   help="prompt + new tokens; with --new-tokens, the prompt is the rest")
    p.add_argument("--engine", "-e", default="runtime",
                   help="engine profile: runtime (this project's), vllm, transformers, llama.cpp")
    add_engine_options(p)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="where the ranks run (cpu: no CUDA context)")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="store the LM head in the weight format too (default: fp16/bf16)")


def _add_search_workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", "-b", type=_tokens("--batch"), default=1, help="sequences per batch")
    p.add_argument("--prompt-tokens", type=_tokens("--prompt-tokens"), default=None,
                   help="prompt tokens per sequence (default 2048)")
    p.add_argument("--new-tokens", type=_tokens("--new-tokens", 0), default=None,
                   help="generated tokens per sequence (default 256)")
    p.add_argument("--context", type=_tokens("--context"), default=None,
                   help="prompt + new tokens")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", "-g", required=True,
                   help="GPU set: 4x3090, 8xA100-40G, h100:8, 2x4090+1x3090, local, cpu, cpu:N")
    p.add_argument("--engine", "-e", default="runtime",
                   help="engine profile: runtime, vllm, transformers, llama.cpp")
    add_engine_options(p)
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="store the LM head in the weight format too")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The engine options (planner.engines.OPTIONS) as flags spelled as the engines spell them;
    each is refused on an engine that does not have it (engine_of)."""
    from planner.engines import OPTIONS

    for key, opt in OPTIONS.items():
        p.add_argument(opt.flag, dest=key, type=_opt_type(opt), default=None, metavar="V",
                       help=opt.help)


def _opt_type(opt):
    def parse(text: str):
        try:
            return opt.parse(text)
        except InputError as e:  # argparse names the flag itself
            raise argparse.ArgumentTypeError(str(e).removeprefix(opt.flag + " ")) from None
    return parse


def _margin_arg(text: str):
    from planner.search import parse_margin

    try:
        return parse_margin(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--margin ")) from None


def engine_of(args: argparse.Namespace):
    """The engine profile of --engine with the engine options the command line set."""
    from planner.engines import OPTIONS, configure, engine

    return configure(engine(args.engine), {k: getattr(args, k, None) for k in OPTIONS})


def _workload(args: argparse.Namespace):
    from planner.memory import Workload

    if args.context is not None:
        if args.prompt_tokens is not None and args.new_tokens is not None:
            if args.prompt_tokens + args.new_tokens != args.context:
                raise InputError("--context must equal --prompt-tokens + --new-tokens")
        if args.prompt_tokens is not None and args.prompt_tokens > args.context:
            raise InputError(f"--prompt-tokens {args.prompt_tokens} exceeds --context "
                             f"{args.context} (the context is prompt + new tokens)")
        new = args.new_tokens if args.new_tokens is not None else (
            args.context - args.prompt_tokens if args.prompt_tokens is not None else 0)
        prompt = args.context - new
        if prompt < 1:
            raise InputError(f"--context {args.context} leaves no prompt tokens after "
                             f"{new} new tokens")
        return Workload(args.batch, prompt, new)
    return Workload(args.batch, args.prompt_tokens if args.prompt_tokens is not None else 2048,
                    args.new_tokens if args.new_tokens is not None else 256)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c.rjust(w) if i in right else c.ljust(w))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _emit(args: argparse.Namespace, doc: dict, text: Callable[[], str]) -> None:
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text() + "\n")


# -- estimate ----------------------------------------------------------------------------------

def cmd_estimate(args: argparse.Namespace) -> int:
    from planner.memory import estimate
    from planner.paths import resolve_model as resolve

    src = resolve(args.model)
    weights, stored = weights_of(args.weights, src)
    eng = engine_of(args)
    gpuset = None
    if getattr(args, "gpus", None):
        from planner.hardware import parse_gpu_set

        gpuset = parse_gpu_set(args.gpus)  # a bad set is one line whatever the engine
    if eng.name == "vllm" and gpuset is not None:
        eng = _vllm_card_defaults(args, src.spec, eng, gpuset)
    est = estimate(src.spec, weights, args.kv_cache, args.tp, args.pp, _workload(args),
                   eng, args.device, args.quantize_lm_head, stored)
    doc = est.to_json()
    if stored is not None:
        doc["precision"]["weights"] = "stored"
    doc["model"]["source"] = {"kind": src.kind, "path": src.path}
    boot = _vllm_startup(args, src.spec, est, stored, gpuset)
    if boot is not None:
        doc["vllm_startup"] = boot.to_json()
    _emit(args, doc, lambda: render_estimate(est) + (f"\n{boot.line()}" if boot else ""))
    return 0


def weights_of(text: str, src) -> tuple[str, dict[str, int] | None]:
    """(weight format key, stored bytes or None) of a --weights value: ``stored`` plans the
    checkpoint's own bytes from its headers (the format key then only names the layout checks)."""
    if text.strip().lower() != "stored":
        return text, None
    from planner.inspect import stored_bytes

    return "fp16", stored_bytes(src)


def _vllm_card_defaults(args, spec, eng, gpuset):
    """The vLLM profile with the scheduler defaults and block size vLLM picks on the first GPU of
    --gpus where the user set none (planner/engines/vllm.py default_batching)."""
    from planner.engines import configure, vllm as V

    if gpuset.kind == "cpu" or not gpuset.devices:
        return eng
    prof = gpuset.devices[0].profile
    tokens, seqs = V.default_batching(prof.name, prof.memory_bytes)
    tokens = args.max_num_batched_tokens or tokens
    return configure(eng, {"max_num_batched_tokens": tokens,
                           "max_num_seqs": min(args.max_num_seqs or seqs, tokens),
                           "block_size": args.block_size or V.default_block_size(
                               spec, prof.compute_capability)})


def _vllm_startup(args, spec, est, stored, gpuset):
    """vLLM's start-up accounting (planner/engines/vllm.py) on the first GPU of --gpus, for
    --engine vllm; None otherwise. max_model_len is the workload's context."""
    if gpuset is None or est.engine.name != "vllm":
        return None
    from planner.engines import vllm as V

    if gpuset.kind == "cpu":
        raise InputError("--engine vllm plans CUDA GPUs; --gpus cpu has none")
    if len(gpuset.devices) < est.tp * est.pp:
        raise InputError(f"TP {est.tp} x PP {est.pp} needs {est.tp * est.pp} GPUs; {args.gpus} "
                         f"has {len(gpuset.devices)}")
    w = None
    if stored is not None:
        w = max(r.weights for r in est.ranks)
    return V.startup(spec, gpuset.devices[0].profile, est.tp, est.pp, est.weights.key,
                     est.kv.key, est.workload.context, est.engine.gpu_memory_utilization,
                     getattr(args, "max_num_batched_tokens", None),
                     getattr(args, "max_num_seqs", None), getattr(args, "block_size", None),
                     weights_bytes=w, quantize_lm_head=args.quantize_lm_head)


def render_estimate(est) -> str:
    w = est.workload
    head = (f"{est.spec.name} ({fmt_count(est.params)} params) · engine {est.engine.name} on "
            f"{est.device} · weights {est.weights.key} · KV cache {est.kv.key} · "
            f"TP {est.tp} × PP {est.pp}\n"
            f"batch {w.batch} · prompt {w.prompt_tokens} + new {w.new_tokens} = context "
            f"{w.context} tokens · KV cache {fmt_bytes(est.kv_bytes_per_token)} per token per "
            "sequence on the busiest rank\n")
    rows = []
    groups: list[list] = []
    for r in est.ranks:
        if groups and groups[-1][0].stage == r.stage:
            groups[-1].append(r)
        else:
            groups.append([r])
    for g in groups:
        r = g[0]
        ranks = str(r.rank) if len(g) == 1 else f"{g[0].rank}-{g[-1].rank}"
        b = r.bytes()
        rows.append([ranks, f"{r.layers[0]}-{r.layers[1] - 1}" if r.layers[1] > r.layers[0] else "-",
                     *(fmt_bytes(b[k]) for k in ("weights", "kv_cache", "activations", "overhead",
                                                 "total"))])
    table = _table(["rank", "layers", "weights", "kv_cache", "activations", "overhead", "total"],
                   rows, right=(2, 3, 4, 5, 6))
    r0 = est.ranks[0]
    act = r0.detail["activations"]
    phase = next(iter(act)).split(".")[0] if act else "-"
    notes = [f"per rank; activations peak in the {phase} phase; overhead = "
             + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r0.detail["overhead"].items())]
    total_all = sum(r.total for r in est.ranks)
    notes.append(f"all {len(est.ranks)} rank(s): {fmt_bytes(total_all)} "
                 f"({total_all:,} bytes; weights {sum(r.weights for r in est.ranks):,} bytes)")
    from planner import generic

    line = generic.describe(est.spec)
    if line:
        notes.append(line)
    notes += [f"warning: {x}" for x in est.warnings]
    return head + "\n" + table + "\n\n" + "\n".join(notes)


# -- inspect -----------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    from planner.inspect import inspect_path
    from planner.paths import check_model_arg, exists

    if exists(args.path):
        check_model_arg(args.path)  # a FIFO, device, loop or unreadable folder: one line
    report = inspect_path(args.path)
    _emit(args, report, lambda: render_inspect(report))
    return 0


def render_inspect(r: dict) -> str:
    lines = [f"{r['path']}: {r['format']}, {r['tensors']:,} tensors, {r['params']:,} parameters "
             f"({fmt_count(r['params'])}), {r['bytes']:,} bytes ({fmt_bytes(r['bytes'])})", ""]
    rows = [[dt, f"{v['tensors']:,}", f"{v['params']:,}", f"{v['bytes']:,}", fmt_bytes(v["bytes"])]
            for dt, v in sorted(r["dtypes"].items(), key=lambda kv: -kv[1]["bytes"])]
    lines.append(_table(["dtype", "tensors", "params", "bytes", "size"], rows, right=(1, 2, 3, 4)))
    m = r.get("model")
    if m:
        lines += ["", f"model: {m['name']} ({m['family']}), {m['layers']} layers, hidden "
                      f"{m['hidden']}, {m['heads']} heads / {m['kv_heads']} KV heads, ffn "
                      f"{m['ffn']}, vocab {m['vocab']}, tied embeddings {m['tied_embeddings']}"]
        inv = r["inventory"]
        lines.append(("inventory matches the checkpoint: " if inv["matches"] else
                      "inventory DIFFERS from the checkpoint: ") + inv["note"])
    elif r.get("model_error"):
        lines += ["", f"no model spec: {r['model_error']}"]
    return "\n".join(lines)


# -- models ------------------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> int:
    from planner import catalog
    from planner.spec import active_param_count, param_count

    items = []
    for e in catalog.entries():
        s = e.spec
        items.append({"name": s.name, "aliases": list(e.aliases), "family": s.family,
                      "params": param_count(s), "active_params": active_param_count(s),
                      "layers": s.layers, "hidden": s.hidden, "heads": s.heads,
                      "kv_heads": s.kv_heads, "max_context": s.max_context, "dtype": s.dtype,
                      "source": e.source})

    def text() -> str:
        rows = [[i["name"], ", ".join(i["aliases"]), i["family"], fmt_count(i["params"]),
                 str(i["layers"]), str(i["hidden"]), f"{i['heads']}/{i['kv_heads']}",
                 str(i["max_context"])] for i in items]
        return _table(["model", "aliases", "family", "params", "layers", "hidden", "heads/kv",
                       "context"], rows, right=(3, 4, 5, 6, 7))

    _emit(args, {"models": items}, text)
    return 0


# -- recommend / capacity / sweep -------------------------------------------------------------

def _problem(args: argparse.Namespace, spec, workload=None):
    from planner.hardware import parse_gpu_set
    from planner.search import make_problem

    gpuset = parse_gpu_set(args.gpus)
    _warn_cpu_cores(gpuset)
    from planner.search import DEFAULT_MARGIN

    return gpuset, make_problem(spec, gpuset, workload or _workload(args), engine_of(args),
                                args.quantize_lm_head, getattr(args, "margin", None) or
                                DEFAULT_MARGIN)


_warned_cores: set = set()


def _warn_cpu_cores(gpuset) -> None:
    """cpu:N plans N ranks on this host's RAM; more ranks than cores launch only oversubscribed."""
    if gpuset.kind != "cpu" or gpuset.text in _warned_cores:
        return
    from planner.launch import _device_count

    cores, _ = _device_count("cpu")
    if gpuset.count > cores:
        _warned_cores.add(gpuset.text)
        sys.stderr.write(f"planner: warning: {gpuset.text} plans {gpuset.count} CPU ranks but this "
                         f"host has {cores} core(s); planner launch runs such a plan only with "
                         "--force (oversubscribed)\n")


def _split_keys(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise InputError(f"empty format list {text!r}")
    return keys


def _one(gpuset) -> str:
    """Where a shortfall is: "on one GPU", or on a CPU set (which shares the host's RAM)."""
    return "for one CPU rank" if getattr(gpuset, "kind", "gpu") == "cpu" else "on one GPU"


def _gpu_line(gpuset, p) -> str:
    w = p.workload
    return (f"{gpuset.describe()} · engine {p.engine.name} · batch {w.batch} · prompt "
            f"{w.prompt_tokens} + new {w.new_tokens} tokens")


def cmd_recommend(args: argparse.Namespace) -> int:
    from planner.search import search, smallest_shortfall

    weights, kv = _split_keys(args.weights), _split_keys(args.kv_cache)
    if args.model is None:
        if args.output:
            raise InputError("-o/--output writes one model's plan: give --model")
        if args.quality_from:
            raise InputError("--quality-from ranks one model's formats by its measured quality: "
                             "give --model")
        return _recommend_all(args, weights, kv)
    from planner.paths import check_output, resolve_model as resolve

    if args.output:
        check_output(args.output, args.force)  # before the search: a FIFO or link fails at once
    src = resolve(args.model)
    measured = None
    if args.quality_from:
        from planner.quality import load_report, measured_order
        from planner.search import DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_GGML

        measured = measured_order(load_report(args.quality_from), src.spec, args.quality_from)
        if weights is None:  # the measured formats join the engine's defaults
            dflt = DEFAULT_WEIGHTS_GGML if args.engine == "llama.cpp" else DEFAULT_WEIGHTS
            weights = list(dict.fromkeys([*measured, *dflt]))
    gpuset, p = _problem(args, src.spec)
    plans, rejected = search(p, weights, kv, args.objective, args.tp, args.pp,
                             finish_top=None if args.json else args.top, measured=measured)
    doc = {"model": {"name": src.spec.name, "source": {"kind": src.kind, "path": src.path}},
           "gpus": gpuset.describe(), "objective": args.objective, "engine": p.engine.name,
           "plans": [c.to_json() for c in plans],
           "rejected": [r.to_json() for r in rejected]}
    if measured is not None:
        doc["quality_from"] = {"report": args.quality_from,
                               "order": sorted(measured, key=lambda k: measured[k])}
    if not plans:
        near = smallest_shortfall(rejected)
        _emit(args, doc, lambda: render_rejected(src.spec.name, gpuset, p, rejected, args))
        if near is None:
            raise InfeasibleError(f"no layout of {src.spec.name} can run on {gpuset.describe()}: "
                                  f"{rejected[0].reason if rejected else 'no candidates'}")
        raise DoesNotFit(f"nothing fits {src.spec.name} on {gpuset.describe()}; closest: "
                         f"{near.weights} · KV {near.kv} · TP {near.tp} · PP {near.pp} needs "
                         f"{fmt_bytes(near.shortfall_bytes)} more {_one(gpuset)}")
    if args.output:
        from planner.plan import candidate_document, write_plan

        write_plan(args.output, candidate_document(plans[0], src, gpuset), force=args.force)
    _emit(args, doc, lambda: render_recommend(src.spec, gpuset, p, plans, rejected, args))
    return 0


def _recommend_all(args: argparse.Namespace, weights, kv) -> int:
    from planner import catalog
    from planner.memory import Workload  # noqa: F401  (workload parsed below)
    from planner.search import search, smallest_shortfall
    from planner.spec import param_count

    workload = _workload(args)
    rows = []
    gpuset = None
    p = None
    any_fit = False
    for entry in sorted(catalog.entries(), key=lambda e: param_count(e.spec)):
        gpuset, p = _problem(args, entry.spec, workload)
        plans, rejected = search(p, weights, kv, args.objective, args.tp, args.pp, finish_top=1,
                                 best_only=True)
        if plans:
            any_fit = True
            rows.append({"model": entry.spec.name, "params": param_count(entry.spec),
                         "best": plans[0].to_json(), "reason": "fits", "_c": plans[0]})
        else:
            near = smallest_shortfall(rejected)
            if near:
                reason = (f"does not fit: closest {near.weights} · KV {near.kv} · TP {near.tp} · "
                          f"PP {near.pp} needs {fmt_bytes(near.shortfall_bytes)} more "
                          + ("per CPU rank" if gpuset.kind == "cpu" else "per GPU"))
            else:
                reason = rejected[0].reason if rejected else "no candidate layouts"
            rows.append({"model": entry.spec.name, "params": param_count(entry.spec),
                         "best": None, "reason": reason, "_c": None})
    doc = {"gpus": gpuset.describe() if gpuset else args.gpus, "objective": args.objective,
           "engine": p.engine.name if p else args.engine,
           "models": [{k: v for k, v in r.items() if k != "_c"} for r in rows]}
    _emit(args, doc, lambda: render_recommend_all(gpuset, p, rows, args))
    if not any_fit:
        raise DoesNotFit(f"no catalog model fits {gpuset.describe()}")
    return 0


def render_recommend_all(gpuset, p, rows, args) -> str:
    head = (f"Best plan per catalog model on {_gpu_line(gpuset, p)} · objective "
            f"{args.objective}\n\n")
    table, notes = [], []
    for r in rows:
        c = r["_c"]
        name = r["model"].split("/")[-1]
        if c is None:
            table.append([name, fmt_count(r["params"]), "does not fit", "-", "-", "-", "-", "-",
                          "-", "-"])
            notes.append(f"{name} {r['reason']}" if r["reason"].startswith("does not fit")
                         else f"{name}: {r['reason']}")
            continue
        worst = max(c.estimate.ranks, key=lambda x: x.total)
        table.append([name, fmt_count(r["params"]), c.weights.key, c.kv.key,
                      f"{c.tp}×{c.pp}", fmt_bytes(worst.total), fmt_bytes(c.headroom),
                      f"{c.max_batch:,}", f"{c.max_context:,}",
                      f"{c.roofline.decode_tokens_per_s:,.1f}"])
    out = head + _table(["model", "params", "weights", "KV", "TP×PP", "per-GPU", "headroom",
                         "max batch", "max context", "decode tok/s"], table,
                        right=(1, 4, 5, 6, 7, 8, 9))
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out + ("\n\nper-GPU: the busiest GPU's total; max batch at this context, max context "
                  "at this batch; decode tok/s: a roofline ceiling from memory bandwidth, not a "
                  "benchmark. planner recommend --model NAME shows every plan.")


def render_recommend(spec, gpuset, p, plans, rejected, args) -> str:
    out = [f"{spec.name} on {_gpu_line(gpuset, p)} · objective {args.objective}", ""]
    if getattr(args, "quality_from", None):
        out[-1:] = [f"quality order measured in {args.quality_from} (Δ perplexity, then KL; "
                    "formats it did not measure rank after these in registry order)", ""]
    rows = []
    for i, c in enumerate(plans[:args.top], 1):
        worst = max(c.estimate.ranks, key=lambda x: x.total)
        rows.append([str(i), c.weights.key, c.kv.key, str(c.tp), str(c.pp), str(c.gpus),
                     fmt_bytes(worst.total), fmt_bytes(c.headroom),
                     f"{c.max_batch:,}" if c.max_batch is not None else "-",
                     f"{c.max_context:,}" if c.max_context is not None else "-",
                     f"{c.roofline.prefill_s:.3g} s", f"{c.roofline.decode_tokens_per_s:,.1f}"])
    out.append(_table(["#", "weights", "KV", "TP", "PP", "GPUs", "per-GPU total", "headroom",
                       "max batch", "max context", "prefill", "decode tok/s"], rows,
                      right=(0, 3, 4, 5, 6, 7, 8, 9, 10, 11)))
    out.append(f"\n{min(len(plans), args.top)} of {len(plans)} plans that fit; {len(rejected)} "
               "rejected" + (" (--show-rejected lists them)" if not args.show_rejected else ":"))
    if args.show_rejected:
        out += [f"  {r.weights} · KV {r.kv} · TP {r.tp} · PP {r.pp}: {r.reason}" for r in rejected]
    best = plans[0]
    out += ["", f"best: {best.label()}", _rank_table(best)]
    if args.output:
        out.append(f"\nplan written to {args.output} (planner launch {args.output}; "
                   f"planner export {args.output} --engine vllm)")
    return "\n".join(out)


def _rank_table(c) -> str:
    rows = []
    for r, d, u in zip(c.estimate.ranks, c.devices, c.usable):
        b = r.bytes()
        rows.append([str(r.rank), f"{d.index}:{d.profile.name}",
                     *(fmt_bytes(b[k]) for k in ("weights", "kv_cache", "activations", "overhead",
                                                 "total")),
                     fmt_bytes(u), fmt_bytes(u - r.total)])
    return _table(["rank", "gpu", "weights", "kv_cache", "activations", "overhead", "total",
                   "usable", "headroom"], rows, right=(2, 3, 4, 5, 6, 7, 8))


def render_rejected(name, gpuset, p, rejected, args) -> str:
    lines = [f"{name} on {_gpu_line(gpuset, p)}: nothing fits", ""]
    misses = sorted((r for r in rejected if r.shortfall_bytes), key=lambda r: r.shortfall_bytes)
    for r in misses[:args.top]:
        lines.append(f"  {r.weights} · KV {r.kv} · TP {r.tp} · PP {r.pp}: short by "
                     f"{fmt_bytes(r.shortfall_bytes)} {_one(gpuset)}")
    return "\n".join(lines)


def cmd_capacity(args: argparse.Namespace) -> int:
    from planner.memory import Workload
    from planner.precision import kv_format, weight_format
    from planner.search import evaluate, finish
    from planner.paths import resolve_model as resolve

    if (args.context is None) == (args.batch is None):
        raise InputError("give exactly one of --context N (for the largest batch) or --batch N "
                         "(for the longest context)")
    src = resolve(args.model)
    new = args.new_tokens or 0
    if args.context is not None:
        if args.context <= new:
            raise InputError(f"--context {args.context} leaves no prompt after {new} new tokens")
        wl = Workload(1, args.context - new, new)
    else:
        wl = Workload(args.batch, 1, new)
    gpuset, p = _problem(args, src.spec, wl)
    c = evaluate(p, weight_format(args.weights), kv_format(args.kv_cache), args.tp, args.pp)
    c.extra["fits_at_minimum"] = c.fits
    finish(p, c)
    doc = {"model": src.spec.name, "gpus": gpuset.describe(), "engine": p.engine.name,
           "precision": {"weights": c.weights.key, "kv_cache": c.kv.key}, "tp": c.tp, "pp": c.pp,
           "context": args.context, "batch": args.batch,
           "max_batch": c.max_batch or 0, "max_context": c.max_context or 0,
           "max_context_limited_by_model": c.max_context_limited_by_model,
           "kv_cache_tokens": c.kv_cache_tokens or 0,
           "ranks": c.to_json()["ranks"]}
    if p.engine.kv_block_tokens:
        doc["kv_blocks"] = c.kv_blocks or 0
        doc["block_size"] = p.engine.kv_block_tokens

    def text() -> str:
        lines = [f"{src.spec.name} · {c.label()} on {_gpu_line(gpuset, p)}"]
        if args.context is not None:
            lines.append(f"max batch at context {args.context}: {doc['max_batch']:,}")
        if args.batch is not None:
            lim = " (the model's own limit)" if c.max_context_limited_by_model else ""
            lines.append(f"max context at batch {args.batch}: {doc['max_context']:,} tokens{lim}")
        lines.append(f"KV-cache budget: {doc['kv_cache_tokens']:,} tokens"
                     + (f" = {doc['kv_blocks']:,} blocks of {p.engine.kv_block_tokens}"
                        if "kv_blocks" in doc else ""))
        return "\n".join(lines)

    _emit(args, doc, text)
    if not c.fits:
        raise DoesNotFit(f"{src.spec.name} with {c.label()} does not fit {gpuset.describe()} even "
                         f"at batch 1: short by {fmt_bytes(-c.headroom)} {_one(gpuset)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from planner.memory import Workload, estimate
    from planner.precision import kv_format, weight_format
    from planner.paths import resolve_model as resolve

    src = resolve(args.model)
    batches = [parse_tokens(b, "--batch") for b in args.batch.split(",")]
    contexts = [parse_tokens(c, "--context") for c in args.context.split(",")]
    fmts = [weight_format(k) for k in _split_keys(args.weights)]
    kvfs = [kv_format(k) for k in _split_keys(args.kv_cache)]
    from planner.search import MAX_SWEEP_CELLS

    cells = len(fmts) * len(kvfs) * len(batches) * len(contexts)
    if cells > MAX_SWEEP_CELLS:
        raise InputError(f"sweep of {len(fmts)} weight x {len(kvfs)} KV formats x {len(batches)} "
                         f"batches x {len(contexts)} contexts = {cells:,} cells is more than the "
                         f"{MAX_SWEEP_CELLS:,} a sweep computes; split it")
    new = args.new_tokens or 0
    for ctx in contexts:
        if ctx <= new:
            raise InputError(f"--context {ctx} leaves no prompt after {new} new tokens")
    usable = None
    eng = engine_of(args)
    p = None
    if args.gpus:
        from planner.search import usable_bytes

        gpuset, p = _problem(args, src.spec, Workload(1, 1, 0))
        usable = [usable_bytes(d, p.engine) for d in p.devices[:args.tp * args.pp]]
        if len(usable) < args.tp * args.pp:
            raise InputError(f"TP {args.tp} × PP {args.pp} needs {args.tp * args.pp} GPUs; "
                             f"{args.gpus} has {len(usable)}")
    rows = []
    for f in fmts:
        for k in kvfs:
            for b in batches:
                for ctx in contexts:
                    est = estimate(src.spec, f, k, args.tp, args.pp, Workload(b, ctx - new, new),
                                   eng, "cpu" if (p and p.kind == "cpu") else "cuda",
                                   args.quantize_lm_head)
                    worst = max(r.total for r in est.ranks)
                    row = {"weights": f.key, "kv_cache": k.key, "batch": b, "context": ctx,
                           "total_bytes": worst, "weights_bytes": est.ranks[0].weights,
                           "kv_cache_bytes": max(r.kv_cache for r in est.ranks)}
                    if usable is not None:
                        row["fits"] = all(r.total <= u for r, u in zip(est.ranks, usable))
                    rows.append(row)
    doc = {"model": src.spec.name, "engine": args.engine, "tp": args.tp, "pp": args.pp,
           "new_tokens": new, "gpus": args.gpus, "rows": rows}
    if args.json:
        _emit(args, doc, str)
        return 0
    sys.stdout.write(render_sweep(doc, batches, contexts, args.format) + "\n")
    return 0


def render_sweep(doc: dict, batches, contexts, style: str) -> str:
    """The RPTQ table's shape: one row per (weights, KV) pair, one column per (batch, context)
    cell, each the busiest rank's total in GiB (✗ where it does not fit the --gpus set)."""
    import csv
    import io

    cols = [(b, c) for b in batches for c in contexts]
    index = {(r["weights"], r["kv_cache"], r["batch"], r["context"]): r for r in doc["rows"]}
    pairs = list(dict.fromkeys((r["weights"], r["kv_cache"]) for r in doc["rows"]))
    if style == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["weights", "kv_cache", "batch", "context", "total_bytes", "fits"])
        for r in doc["rows"]:
            w.writerow([r["weights"], r["kv_cache"], r["batch"], r["context"], r["total_bytes"],
                        r.get("fits", "")])
        return buf.getvalue().rstrip("\n")

    def cell(r) -> str:
        txt = f"{r['total_bytes'] / 2**30:.1f}"
        return txt + (" ✗" if r.get("fits") is False else "")

    headers = ["weights", "KV"] + [f"b{b}·{c}" for b, c in cols]
    body = [[w, k] + [cell(index[(w, k, b, c)]) for b, c in cols] for w, k in pairs]
    title = (f"{doc['model']} · engine {doc['engine']} · TP {doc['tp']} · PP {doc['pp']} · "
             f"GiB per GPU (busiest rank), batch · context")
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |",
                 "| " + " | ".join(["---"] * 2 + ["---:"] * len(cols)) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return f"{title}\n\n" + "\n".join(lines)
    return title + "\n\n" + _table(headers, body, right=tuple(range(2, len(headers))))


# -- export / gpus ------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from planner.export import export_command, render
    from planner.plan import load_plan

    plan = load_plan(args.plan)
    argv, notes = export_command(plan, args.engine)
    doc = {"engine": args.engine, "argv": argv, "command": render(argv), "notes": notes}
    _emit(args, doc, lambda: "\n".join([render(argv), *(f"# {n}" for n in notes)]))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from planner import hardware

    if args.detect:
        gpuset = hardware.detect_local()
        devs = [{"index": d.index, "name": d.profile.name, "memory_bytes": d.memory_bytes,
                 "free_bytes": d.free_bytes} for d in gpuset.devices]
        _emit(args, {"gpus": devs}, lambda: _table(
            ["index", "profile", "memory", "free"],
            [[str(d["index"]), d["name"], fmt_bytes(d["memory_bytes"]),
              fmt_bytes(d["free_bytes"]) if d["free_bytes"] is not None else "-"] for d in devs],
            right=(0, 2, 3)))
        return 0
    items = []
    for g in hardware.profiles():
        if g.name == "cpu":
            continue  # its memory is read at run time (--gpus cpu); not a card to list
        items.append({"name": g.name, "aliases": list(g.aliases), "vendor": g.vendor,
                      "memory_bytes": g.memory_bytes,
                      "memory_bandwidth_bytes_per_s": g.memory_bandwidth_bytes_per_s,
                      "flops_per_s": dict(g.flops_per_s),
                      "compute_capability": ("%d.%d" % g.compute_capability
                                             if g.compute_capability else None),
                      "interconnect": g.interconnect,
                      "link_bandwidth_bytes_per_s": g.link_bandwidth_bytes_per_s,
                      "price_per_hour_usd": g.price_per_hour_usd})

    def text() -> str:
        def tf(v):
            return f"{v / 1e12:,.0f}" if v else "-"
        rows = [[i["name"], fmt_bytes(i["memory_bytes"]),
                 f"{i['memory_bandwidth_bytes_per_s'] / 1e9:,.0f}",
                 tf(i["flops_per_s"].get("fp16")), tf(i["flops_per_s"].get("fp8")),
                 i["compute_capability"] or "-", i["interconnect"],
                 f"{i['price_per_hour_usd']:.2f}" if i["price_per_hour_usd"] is not None else "-"]
                for i in items]
        return _table(["gpu", "memory", "GB/s", "fp16 TFLOPS", "fp8 TFLOPS", "cc", "link",
                       "$/h"], rows, right=(1, 2, 3, 4, 7))

    _emit(args, {"gpus": items}, text)
    return 0


# -- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="planner", description="LLM-inference memory planner and capacity calculator")
    p.add_argument("--version", action="version", version=f"planner {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    e = sub.add_parser("estimate", help="per-rank memory for a model, precision, layout and workload")
    _add_model_args(e)
    _add_workload_args(e)
    e.add_argument("--gpus", "-g", default=None,
                   help="GPU set the ranks run on; with --engine vllm, also the KV-cache size and "
                        "maximum concurrency vLLM would log at start-up")
    e.add_argument("--json", action="store_true", help="one JSON document on stdout")
    e.set_defaults(func=cmd_estimate)

    i = sub.add_parser("inspect", help="exact tensors, parameters and bytes of a config.json, "
                                       "safetensors checkpoint or GGUF file")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="one JSON document on stdout")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("recommend", help="the best layouts for a model (or every catalog model) on "
                                         "a GPU set")
    r.add_argument("--model", "-m", default=None,
                   help="catalog name or path; omit to answer for every catalog model")
    _add_search_args(r)
    _add_search_workload_args(r)
    r.add_argument("--weights", "-w", default=None,
                   help="comma-separated weight formats to consider (default: the engine's)")
    r.add_argument("--kv-cache", default=None, help="comma-separated KV formats to consider")
    r.add_argument("--tp", type=_tokens("--tp"), default=None, help="only this TP degree")
    r.add_argument("--pp", type=_tokens("--pp"), default=None, help="only this PP degree")
    r.add_argument("--objective", choices=OBJECTIVES, default=DEFAULT_OBJECTIVE,
                   help="rank by serve (default: the fewest GPUs that keep --margin free, "
                        "lossless before lossy, then decode speed), quality (lossless formats "
                        "first), gpus (fewest), cost (per token), throughput (decode tokens/s) "
                        "or latency (prefill + decode of the workload)")
    r.add_argument("--margin", type=_margin_arg, default=None, metavar="M",
                   help="memory each GPU keeps free for a plan to rank as serving: a share, a "
                        "size or both (5%%, 2GiB, 5%%,1GiB: the larger); default 5%%,1GiB; an "
                        "engine's own cap (vLLM --gpu-memory-utilization) counts toward it")
    r.add_argument("--top", type=_tokens("--top"), default=10, help="plans to show (default 10)")
    r.add_argument("--show-rejected", action="store_true", help="list rejected candidates")
    r.add_argument("-o", "--output", default=None, help="write the best plan to this YAML file")
    r.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    r.add_argument("--quality-from", default=None, metavar="REPORT.json",
                   help="rank weight formats by the quality measured for this model in a "
                        "planner quality report instead of the published order")
    r.add_argument("--json", action="store_true", help="one JSON document on stdout")
    r.set_defaults(func=cmd_recommend)

    c = sub.add_parser("capacity", help="largest batch at a context, or longest context at a batch")
    _add_model_args(c)
    _add_search_args(c)
    c.add_argument("--weights", "-w", default="fp16", help="weight format")
    c.add_argument("--kv-cache", default="fp16", help="KV-cache format")
    c.add_argument("--tp", type=_tokens("--tp"), default=1, help="tensor-parallel degree")
    c.add_argument("--pp", type=_tokens("--pp"), default=1, help="pipeline-parallel degree")
    c.add_argument("--context", type=_tokens("--context"), default=None,
                   help="context per sequence: answer the largest batch")
    c.add_argument("--batch", type=_tokens("--batch"), default=None,
                   help="batch: answer the longest context")
    c.add_argument("--new-tokens", type=_tokens("--new-tokens", 0), default=0,
                   help="generated tokens included in the context (default 0)")
    c.add_argument("--json", action="store_true", help="one JSON document on stdout")
    c.set_defaults(func=cmd_capacity)

    w = sub.add_parser("sweep", help="memory over batch × context × formats (the RPTQ table)")
    _add_model_args(w)
    w.add_argument("--gpus", "-g", default=None, help="mark cells that do not fit this GPU set")
    w.add_argument("--batch", default="1,8,64", help="comma-separated batch sizes")
    w.add_argument("--context", default="2048,4096,8192", help="comma-separated contexts")
    w.add_argument("--weights", "-w", default="fp16,int8,int4", help="comma-separated formats")
    w.add_argument("--kv-cache", default="fp16", help="comma-separated KV formats")
    w.add_argument("--new-tokens", type=_tokens("--new-tokens", 0), default=0)
    w.add_argument("--tp", type=_tokens("--tp"), default=1)
    w.add_argument("--pp", type=_tokens("--pp"), default=1)
    w.add_argument("--engine", "-e", default="runtime")
    add_engine_options(w)
    w.add_argument("--quantize-lm-head", action="store_true")
    w.add_argument("--format", choices=("table", "csv", "markdown"), default="table")
    w.add_argument("--json", action="store_true", help="one JSON document on stdout")
    w.set_defaults(func=cmd_sweep)

    x = sub.add_parser("export", help="a plan file as a vLLM / SGLang / TensorRT-LLM / llama.cpp "
                                      "launch command")
    x.add_argument("plan")
    x.add_argument("--engine", "-e", required=True, choices=("vllm", "sglang", "trtllm",
                                                             "llama.cpp"))
    x.add_argument("--json", action="store_true", help="one JSON document on stdout")
    x.set_defaults(func=cmd_export)

    gp = sub.add_parser("gpus", help="hardware profiles; --detect shows what NVML sees")
    gp.add_argument("--detect", action="store_true", help="list this machine's GPUs through NVML")
    gp.add_argument("--json", action="store_true", help="one JSON document on stdout")
    gp.set_defaults(func=cmd_gpus)

    # launch, tui, quality and verify register themselves; their modules import nothing heavy here
    # (the runtime runs in another process; textual is imported when the TUI starts).
    import importlib
    import importlib.util

    for mod in ("planner.launch", "planner.tui", "planner.quality", "planner.verify"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod).add_parser(sub)

    m = sub.add_parser("models", help="the built-in model catalog")
    m.add_argument("--json", action="store_true", help="one JSON document on stdout")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            raise InputError("no command given; try planner estimate, inspect or models "
                             "(planner --help lists them)")
        return int(args.func(args))
    except PlannerError as e:
        msg = " ".join(str(e).split())  # one line, whatever a message or a hostile name holds
        while msg.startswith(("planner: ", "error: ")):
            msg = msg.split(": ", 1)[1]
        sys.stderr.write(f"planner: error: {msg}\n")
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:  # a path that changed under a check: still one line, never a traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        sys.stderr.write(f"planner: error: {where}{e.strerror or e}\n")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP during launch/quality (Stopped)
        signum = int(getattr(e, "signum", 2))
        sys.stderr.write("planner: interrupted\n" if signum == 2 else f"planner: stopped by {e}\n")
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
