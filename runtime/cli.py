"""``python -m runtime PLAN``: one rank of a plan (torchrun starts one per rank).

Builds the model, loads weights, allocates the KV cache, runs prefill and greedy decode, measures each
phase and reports predicted vs measured (rank 0 prints the table / JSON for every rank). Exit 0 when
every line is within tolerance, 1 when one is not (or memory ran out, or the plan does not fit the
free memory), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TOLERANCES = {"weights": 0.0, "kv_cache": 0.0, "activations": 0.02}
"""Relative tolerance of each line on the CPU: weights and KV cache exact to the byte, activations
2% (planner/activations.py walks the runtime allocation by allocation; every format the CPU tests
launch measures exact, runtime/NOTES.md "Weight formats")."""
CUDA_TOLERANCES = {"weights": 0.0, "kv_cache": 0.0, "activations": 0.10}
"""On CUDA activations keep 10%: the caching allocator rounds every block (512 B, 2 MiB segments)
and the CUDA walk (Triton partials, torch-dequant-mm, triton-llm-int8) has not been measured on a
GPU yet."""

MODULE_GROUPS = {"attention": r"layers\.\d+\.self_attn$", "mlp": r"layers\.\d+\.mlp$",
                 "norm": r"layers\.\d+\.(input_layernorm|post_attention_layernorm|"
                         r"post_self_attn_layernorm|post_mlp_layernorm)$",
                 "lm_head": r"(^|\.)lm_head$"}
"""The modules whose measured peaks (runtime/measure.py PhaseTracker.modules) are compared with
the walk's moments of the same sub-block (planner.activations.moment_group)."""


def tolerances(device_type: str) -> dict[str, float]:
    """The tolerances of a run on ``device_type`` (``cpu`` / ``cuda``)."""
    return CUDA_TOLERANCES if device_type == "cuda" else TOLERANCES


def _within(p: int, m: int, tol: float) -> bool:
    return abs(m - p) <= tol * p if tol else m == p


def module_groups(modules: dict[str, int]) -> dict[str, int]:
    """Measured peak transient bytes per sub-block (MODULE_GROUPS) from per-module peaks."""
    import re
    out: dict[str, int] = {}
    for name, b in modules.items():
        for g, pat in MODULE_GROUPS.items():
            if re.search(pat, name):
                out[g] = max(out.get(g, 0), b)
    return out


def phase_report(predicted: dict[str, dict[str, int]], measured: dict[str, tuple[int, dict]],
                 tol: float) -> dict[str, dict]:
    """Predicted vs measured per phase (its peak) and per sub-block within it (the largest walk
    moment of the sub-block vs the peak measured inside those modules), each with ``ok``."""
    out: dict[str, dict] = {}
    for name, (peak, groups) in measured.items():
        pred = predicted.get(name)
        if pred is None:
            continue
        ph = {"predicted": int(pred["peak"]), "measured": int(peak),
              "ok": _within(pred["peak"], peak, tol), "groups": {}}
        for g, m in groups.items():
            if g in pred:
                ph["groups"][g] = {"predicted": int(pred[g]), "measured": int(m),
                                   "ok": _within(pred[g], m, tol)}
        out[name] = ph
    return out


class Fail(Exception):
    def __init__(self, msg: str, code: int):
        super().__init__(msg)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    p.add_argument("plan", help="plan file (planner recommend/estimate --save)")
    p.add_argument("--checkpoint", help="safetensors file/folder or GGUF file to load (default: the "
                                         "plan's own checkpoint source, if any; else random weights)")
    p.add_argument("--random-weights", action="store_true",
                   help="deterministic random weights even when the plan names a checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompt ids")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--report", help="also write the JSON report to this path")
    p.add_argument("--force", action="store_true",
                   help="run even when the prediction exceeds the free memory detected")
    p.add_argument("--no-verify", action="store_true",
                   help="trust the plan as written: skip its hash check and the recomputation "
                        "of its prediction")
    q = p.add_argument_group("quality (runtime.eval; one process at TP 1, no memory measurement)")
    q.add_argument("--eval", action="store_true",
                   help="measure perplexity, KL and top-1 agreement of the plan's weight format "
                        "against the base (the checkpoint dequantized to the activation dtype)")
    from runtime.eval import DEFAULT_STRIDE, DEFAULT_TOKENS, DEFAULT_WINDOW
    q.add_argument("--eval-text", default=None, help="UTF-8 text (default: pydoc_data topics)")
    q.add_argument("--eval-tokens", type=int, default=DEFAULT_TOKENS,
                   help=f"evaluate the first N tokens (default {DEFAULT_TOKENS})")
    q.add_argument("--eval-window", type=int, default=DEFAULT_WINDOW,
                   help=f"sliding window (default {DEFAULT_WINDOW})")
    q.add_argument("--eval-stride", type=int, default=DEFAULT_STRIDE,
                   help=f"window stride (default {DEFAULT_STRIDE})")
    q.add_argument("--tokenizer", default=None,
                   help="tokenizer.json or GGUF (default: the checkpoint's own)")
    q.add_argument("--prompt", default=None,
                   help="greedy continuation of this text in the plan's format (with --eval: "
                        "by the base and the format)")
    q.add_argument("--max-new-tokens", type=int, default=32,
                   help="tokens --prompt generates (default 32)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from runtime.measure import env_rank
    rank, world, local = env_rank()
    try:
        _check_paths(args)
        if args.eval or args.prompt is not None:
            return _quality(args)
        return _run(args, rank, world, local)
    except Fail as e:
        print(f"runtime (rank {rank}): {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"runtime (rank {rank}): interrupted", file=sys.stderr)
        return 130


def _check_paths(args) -> None:
    """Stat every path given before opening one (planner.paths): a FIFO or device never blocks."""
    from planner.errors import PlannerError
    from planner.paths import check_input, check_output
    try:
        if args.checkpoint:
            check_input(args.checkpoint, "any", "checkpoint")
        for path, what in ((args.eval_text, "text file"), (args.tokenizer, "tokenizer file")):
            if path:
                check_input(path, "file", what)
        if args.report:
            check_output(args.report, force=True)
    except PlannerError as e:
        raise Fail(str(e), 2) from None


def _write_report(path: str, doc: dict) -> None:
    """The JSON report, atomically; only ever over a regular file (planner.paths)."""
    from planner.errors import PlannerError
    from planner.paths import atomic_write
    try:
        atomic_write(path, json.dumps(doc, indent=1), force=True)
    except PlannerError as e:
        raise Fail(str(e), 2) from None


def _quality(args) -> int:
    """``--eval`` / ``--prompt``: the plan's format on its checkpoint with the real tokenizer."""
    from planner.errors import PlannerError
    from runtime.eval import EvalError, run
    plan = _load_plan(args)
    ckpt = args.checkpoint
    if ckpt is None and plan.source.get("kind") in ("safetensors", "safetensors-sharded", "gguf"):
        ckpt = plan.source.get("path")
    if not ckpt or args.random_weights:
        raise Fail("--eval and --prompt need real weights: the plan names no checkpoint; give "
                   "--checkpoint PATH", 2)
    device = "cuda" if plan.device == "cuda" else "cpu"
    try:
        if args.eval:
            doc = run(plan.spec, ckpt, [plan.weights], text_path=args.eval_text,
                      tokens=args.eval_tokens, window=args.eval_window, stride=args.eval_stride,
                      kv=plan.kv_cache, device_name=device, tokenizer=args.tokenizer,
                      prompt=args.prompt, new_tokens=args.max_new_tokens)
            doc["plan"] = os.path.abspath(args.plan)
            from planner.quality import render as render_quality
            _emit_report(args, doc, render_quality)
            return 0
        return _generate_only(args, plan, ckpt, device)
    except EvalError as e:
        raise Fail(str(e), 2) from None
    except PlannerError as e:
        raise Fail(str(e), e.exit_code) from None


def _generate_only(args, plan, ckpt, device_name) -> int:
    import torch
    from runtime import tokenizer as T
    from runtime.eval import EvalError, act_dtype, generate, load_model
    from runtime.model import RuntimeError_, check_buildable
    from runtime.weights import open_checkpoint
    try:
        check_buildable(plan.spec, plan.workload.context)
        tok = T.load(ckpt, args.tokenizer)
        T.check_vocab(tok, plan.spec.vocab, plan.spec.name)
        torch.set_grad_enabled(False)
        device = torch.device(device_name)
        model, load_s = load_model(plan.spec, open_checkpoint(ckpt, plan.spec), plan.weights,
                                   act_dtype(device, plan.weights), device)
        t0 = time.perf_counter()
        gen = generate(model, tok, args.prompt, args.max_new_tokens, plan.kv_cache, device)
        gen_s = time.perf_counter() - t0
    except (RuntimeError_, T.TokenizerError) as e:
        raise EvalError(str(e)) from None
    doc = {"model": plan.spec.name, "weights": plan.weights, "kv_cache": plan.kv_cache,
           "checkpoint": os.path.abspath(ckpt), "tokenizer": tok.source, **gen,
           "tokens_generated": len(gen["ids"]), "load_seconds": round(load_s, 2),
           "generate_seconds": round(gen_s, 2)}
    if args.report:
        _write_report(args.report, doc)
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{plan.spec.name} · weights {plan.weights} · KV {plan.kv_cache} · greedy, "
              f"{len(gen['ids'])} tokens in {gen_s:.1f} s")
        print(args.prompt + gen["text"])
    return 0


def _load_plan(args):
    from planner.errors import PlannerError
    from planner.plan import load_plan
    try:
        return load_plan(args.plan, verify=not args.no_verify)
    except PlannerError as e:
        raise Fail(str(e), 2) from None


def _act_dtype(plan, device):
    import torch
    if plan.weights == "fp32":
        return torch.float32
    if device.type == "cpu":
        # fp16 matmuls on a CPU without AVX512-FP16 run ~800x slower than bf16 (measured: 16.6 s vs
        # 0.02 s for 512x2048x2048): compute in bf16 there; fp16 tensors are cast per call.
        return torch.bfloat16
    return torch.bfloat16 if plan.weights == "bf16" or plan.kv_cache == "bf16" else torch.float16


def _run(args, rank: int, world: int, local: int) -> int:
    plan = _load_plan(args)
    from runtime.model import RuntimeError_, check_buildable
    n_ranks = plan.tp * plan.pp
    if world != n_ranks:
        raise Fail(f"the plan has {n_ranks} rank(s) (TP {plan.tp} x PP {plan.pp}) but {world} "
                   f"process(es) were started; use `planner launch {args.plan}`", 2)
    try:
        check_buildable(plan.spec, plan.workload.context, plan.pp)
    except RuntimeError_ as e:
        raise Fail(str(e), 2) from None

    import torch
    device = torch.device("cpu")
    if plan.device == "cuda":
        if not torch.cuda.is_available() or torch.cuda.device_count() <= local:
            raise Fail(f"the plan runs on CUDA but this host has {torch.cuda.device_count()} "
                       f"GPU(s) visible for local rank {local}", 2)
        gpu = plan.ranks[rank].get("gpu")
        device = torch.device("cuda", local if gpu is None else int(gpu) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    torch.set_grad_enabled(False)

    group = None
    if world > 1:
        import datetime
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=300))
        group = dist.group.WORLD
    ok = False
    try:
        code = _rank_main(args, plan, rank, world, device, group)
        ok = True
        return code
    finally:
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                if ok:  # every rank is done with its collectives before teardown; a failed rank
                    dist.barrier()  # leaves at once and the launcher stops the others
                dist.destroy_process_group()


def _check_free(plan, rank: int, device, force: bool) -> dict:
    """Compare the prediction with the free memory detected; Fail (exit 1) unless forced."""
    from runtime.measure import meminfo_available_bytes, nvml_free_bytes
    from planner.units import fmt_bytes
    if device.type == "cpu":
        need = sum(r["bytes"]["total"] for r in plan.ranks)  # every rank shares the host's RAM
        free = meminfo_available_bytes()
        where = "available host RAM (/proc/meminfo MemAvailable) for all ranks"
    else:
        need = plan.ranks[rank]["bytes"]["total"]
        free = nvml_free_bytes(device.index) or 0
        where = f"free memory on GPU {device.index} (NVML)"
        if not free:  # no NVML: the CUDA driver's own figure
            try:
                import torch
                free = int(torch.cuda.mem_get_info(device)[0])
                where = f"free memory on GPU {device.index} (cudaMemGetInfo)"
            except Exception:  # noqa: BLE001 - any failure means: cannot check
                free = 0
    info = {"predicted_bytes": need, "free_bytes": free}
    if not free and not force:  # an unknown figure never passes the check silently
        asked = "/proc/meminfo" if device.type == "cpu" else "neither NVML nor cudaMemGetInfo"
        raise Fail(f"cannot check the {where.split(' (')[0]} ({asked} answered) before "
                   f"allocating {fmt_bytes(need)}; refusing to start (use --force to run "
                   "unchecked)", 1)
    if free and need > free and not force:
        raise Fail(f"the plan needs {fmt_bytes(need)} ({need:,} bytes) but the {where} is "
                   f"{fmt_bytes(free)} ({free:,} bytes); refusing to start (use --force to try "
                   "anyway)", 1)
    return info


def _rank_main(args, plan, rank, world, device, group) -> int:
    import torch
    from runtime import weights as W
    from runtime.measure import PhaseTracker, model_bytes, rss_bytes
    from runtime.model import KVCache, Layout, RuntimeError_, build, move_to

    free_info = _check_free(plan, rank, device, args.force)
    act = _act_dtype(plan, device)
    lay = Layout(tp=plan.tp, rank=rank, weights=plan.weights,
                 quantize_lm_head=plan.quantize_lm_head, act_dtype=act, group=group)
    pred = plan.ranks[rank]["bytes"]
    phase = "build"
    result: dict = {"rank": rank, "device": str(device)}
    try:
        model = build(plan.spec, lay)
        phase = "weights"
        rss0 = rss_bytes()[0]
        t0 = time.perf_counter()
        ckpt = args.checkpoint
        if ckpt is None and not args.random_weights and plan.source.get("kind") in (
                "safetensors", "safetensors-sharded", "gguf"):
            ckpt = plan.source.get("path")
        if ckpt:
            src = W.open_checkpoint(ckpt, plan.spec)
            W.materialize_checkpoint(model, src)
        else:
            W.materialize_random(model, args.seed)
        move_to(model, device)
        load_s = time.perf_counter() - t0
        rss = rss_bytes()
        result["loading"] = {"source": ckpt or "random", "seconds": round(load_s, 3),
                             "rss_before_bytes": rss0, "rss_peak_bytes": rss[1],
                             "rss_after_bytes": rss[0]}
        w_measured = model_bytes(model)
        if device.type == "cpu":
            from runtime.measure import cpu_categories
            cats = cpu_categories(model)
            tracked = cats.get("Parameter", 0) + cats.get("Buffer", 0)
            if tracked != w_measured:  # two independent counts; should never differ
                result["weights_memtracker_bytes"] = tracked

        phase = "kv_cache"
        w = plan.workload
        cache = KVCache(plan.spec, plan.kv_cache, plan.tp, w.batch, w.context, device)
        kv_measured = cache.nbytes

        g = torch.Generator().manual_seed(args.seed + 1)
        ids = torch.randint(0, plan.spec.vocab, (w.batch, w.prompt_tokens), generator=g).to(device)
        external = [model, *cache.tensors(), ids]

        phase = "prefill"
        pre = PhaseTracker(device, external)
        t0 = time.perf_counter()
        with pre.track():
            nxt = model(ids, cache, 0)
        t_pre = time.perf_counter() - t0
        # the generated ids go into one tensor allocated before decode is tracked, so no id
        # tensor accumulates in the decode figure (the walk counts none)
        gen = torch.empty(max(1, w.new_tokens), w.batch, dtype=torch.int64, device=device)
        gen[0].copy_(nxt)
        del nxt
        phase = "decode"
        dec = PhaseTracker(device, external + [gen])
        t0 = time.perf_counter()
        with dec.track():
            for step in range(w.new_tokens - 1 if w.new_tokens else 0):
                dec.step()
                cur = model(gen[step].view(w.batch, 1), cache, w.prompt_tokens + step)
                gen[step + 1].copy_(cur)
                del cur
        t_dec = time.perf_counter() - t0
        act_measured = max(pre.peak_bytes, dec.peak_bytes)
        tols = tolerances(device.type)
        result["phases"] = {"prefill_peak_bytes": pre.peak_bytes, "decode_peak_bytes": dec.peak_bytes,
                            "prefill_categories": pre.categories,
                            "compare": _phase_compare(plan, device, pre, dec, tols)}
        n_dec = max(0, w.new_tokens - 1)
        result["tokens_per_s"] = {
            "prefill": w.batch * w.prompt_tokens / t_pre if t_pre > 0 else 0.0,
            "decode": w.batch * n_dec / t_dec if (t_dec > 0 and n_dec) else 0.0}
        result["generated"] = gen[:, 0][:8].tolist()
        lines = {"weights": (pred["weights"], w_measured), "kv_cache": (pred["kv_cache"], kv_measured),
                 "activations": (pred["activations"], act_measured)}
        if device.type == "cuda":
            torch.cuda.synchronize()
            from runtime.measure import nvml_used_bytes
            result["cuda"] = {"max_allocated_bytes": torch.cuda.max_memory_allocated(),
                              "reserved_bytes": torch.cuda.memory_reserved(),
                              "nvml_used_bytes": nvml_used_bytes(device.index)}
        result["lines"] = {}
        for name, (p, m) in lines.items():
            tol = tols[name]
            result["lines"][name] = {"predicted": int(p), "measured": int(m),
                                     "ok": bool(_within(p, m, tol)), "tolerance": tol}
    except RuntimeError_ as e:
        raise Fail(str(e), 2) from None
    except (MemoryError, torch.OutOfMemoryError) as e:
        from planner.units import fmt_bytes
        raise Fail(f"out of memory in phase {phase}: predicted {fmt_bytes(pred['total'])} "
                   f"({pred['total']:,} bytes) for this rank, {fmt_bytes(free_info['free_bytes'])} "
                   f"free when it started ({type(e).__name__}: {str(e)[:200]})", 1) from None
    return _report(args, plan, rank, world, result, group)


def _phase_compare(plan, device, pre, dec, tols) -> dict:
    """Each phase's predicted peak and sub-block moments (planner/activations.py, the walk
    planner.memory.estimate runs) against what the PhaseTrackers measured."""
    from planner.activations import runtime_phases
    from planner.engines import engine as get_engine
    from planner.memory import padded_vocab
    from planner.precision import kv_format, weight_format
    w = plan.workload
    # the runtime's last decode step reads prompt + new - 1 cached tokens (the last new token is
    # never fed back); the plan's decode step is at the full context, one token more
    predicted = runtime_phases(plan.spec, weight_format(plan.weights), kv_format(plan.kv_cache),
                               "cuda" if device.type == "cuda" else "cpu", plan.quantize_lm_head,
                               plan.tp, w.batch, w.prompt_tokens, w.new_tokens,
                               padded_vocab(plan.spec, plan.tp, get_engine("runtime")),
                               decode_s_kv=w.prompt_tokens + w.new_tokens - 1)
    measured = {"prefill": (pre.peak_bytes, module_groups(pre.modules))}
    if w.new_tokens > 1:  # the first new token comes from prefill; decode runs new - 1 steps
        measured["decode"] = (dec.peak_bytes, module_groups(dec.modules))
    return phase_report(predicted, measured, tols["activations"])


def _report(args, plan, rank, world, result, group) -> int:
    results = [result]
    if world > 1:
        import torch.distributed as dist
        results = [None] * world
        dist.all_gather_object(results, result, group=group)
    ok = all(l["ok"] for r in results for l in r["lines"].values())
    if rank != 0:
        return 0 if ok else 1
    doc = {"ok": ok, "plan": os.path.abspath(args.plan), "model": plan.spec.name,
           "device": plan.device, "weights": plan.weights, "kv_cache": plan.kv_cache,
           "tp": plan.tp, "workload": {"batch": plan.workload.batch,
                                       "prompt_tokens": plan.workload.prompt_tokens,
                                       "new_tokens": plan.workload.new_tokens},
           "tolerances": tolerances("cuda" if plan.device == "cuda" else "cpu"),
           "ranks": results,
           "tokens_per_s": {k: min(r["tokens_per_s"][k] for r in results)
                            for k in ("prefill", "decode")}}
    _emit_report(args, doc, render)
    return 0 if ok else 1


def _emit_report(args, doc: dict, render_text) -> None:
    """Write the JSON report to --report, and print it (--json) or its table."""
    if args.report:
        _write_report(args.report, doc)
    print(json.dumps(doc) if args.json else render_text(doc))


def render(doc: dict) -> str:
    from planner.units import fmt_bytes
    out = [f"{doc['model']} · {doc['device']} · weights {doc['weights']} · KV {doc['kv_cache']} · "
           f"TP {doc['tp']} · batch {doc['workload']['batch']} · prompt "
           f"{doc['workload']['prompt_tokens']} + new {doc['workload']['new_tokens']}", ""]
    hdr = f"{'rank':>4}  {'line':<11} {'predicted':>16} {'measured':>16} {'diff':>8}  {'tolerance':<9} result"
    out += [hdr, "-" * len(hdr)]
    for r in doc["ranks"]:
        for name, l in r["lines"].items():
            p, m = l["predicted"], l["measured"]
            diff = f"{(m - p) / p * 100:+.1f}%" if p else "n/a"
            tol = "exact" if not l["tolerance"] else f"±{l['tolerance'] * 100:.0f}%"
            out.append(f"{r['rank']:>4}  {name:<11} {p:>16,} {m:>16,} {diff:>8}  {tol:<9} "
                       f"{'PASS' if l['ok'] else 'FAIL'}")
    phases = [(r["rank"], name, ph) for r in doc["ranks"]
              for name, ph in r.get("phases", {}).get("compare", {}).items()]
    if phases:
        head = (f"{'rank':>4}  {'phase / sub-block':<19} {'predicted':>16} {'measured':>16} "
                f"{'diff':>8}  {'tolerance':<9} result")
        out += ["", "activations by phase, and by sub-block (its largest walk moment vs the peak "
                "measured inside it)", head, "-" * len(head)]
        tol = f"±{doc['tolerances']['activations'] * 100:.0f}%"
        for rank, name, ph in phases:
            for label, l in [(name, ph), *((f"  {g}", gl) for g, gl in ph["groups"].items())]:
                p, m = l["predicted"], l["measured"]
                diff = f"{(m - p) / p * 100:+.1f}%" if p else "n/a"
                out.append(f"{rank:>4}  {label:<19} {p:>16,} {m:>16,} {diff:>8}  {tol:<9} "
                           f"{'ok' if l['ok'] else 'off'}")
    tps = doc["tokens_per_s"]
    r0 = doc["ranks"][0]
    out += ["", f"tokens/s: prefill {tps['prefill']:.1f}, decode {tps['decode']:.1f} (rank minimum)",
            f"rank 0 loading: {r0['loading']['source']}, {r0['loading']['seconds']} s, peak RSS "
            f"{fmt_bytes(r0['loading']['rss_peak_bytes'])}",
            "result: " + ("PASS" if doc["ok"] else "FAIL (a line missed its tolerance)")]
    return "\n".join(out)
