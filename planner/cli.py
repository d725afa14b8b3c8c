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
from planner.errors import InputError, PlannerError
from planner.units import fmt_bytes, fmt_count, parse_tokens


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise InputError(f"{self.prog}: {message} (see {self.prog} --help)")


def _tokens(what: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return parse_tokens(text, what, minimum)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = what
    return parse


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
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="where the ranks run (cpu: no CUDA context)")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="store the LM head in the weight format too (default: fp16/bf16)")


def _workload(args: argparse.Namespace):
    from planner.memory import Workload

    if args.context is not None:
        if args.prompt_tokens is not None and args.new_tokens is not None:
            if args.prompt_tokens + args.new_tokens != args.context:
                raise InputError("--context must equal --prompt-tokens + --new-tokens")
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
    from planner.sources import resolve

    src = resolve(args.model)
    weights, stored = args.weights, None
    if args.weights.strip().lower() == "stored":
        from planner.inspect import stored_bytes

        weights, stored = "fp16", stored_bytes(src)
    est = estimate(src.spec, weights, args.kv_cache, args.tp, args.pp, _workload(args),
                   args.engine, args.device, args.quantize_lm_head, stored)
    doc = est.to_json()
    if stored is not None:
        doc["precision"]["weights"] = "stored"
    doc["model"]["source"] = {"kind": src.kind, "path": src.path}
    _emit(args, doc, lambda: render_estimate(est))
    return 0


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
    notes += [f"warning: {x}" for x in est.warnings]
    return head + "\n" + table + "\n\n" + "\n".join(notes)


# -- inspect -----------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    from planner.inspect import inspect_path

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


# -- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="planner", description="LLM-inference memory planner and capacity calculator")
    p.add_argument("--version", action="version", version=f"planner {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    e = sub.add_parser("estimate", help="per-rank memory for a model, precision, layout and workload")
    _add_model_args(e)
    _add_workload_args(e)
    e.add_argument("--json", action="store_true", help="one JSON document on stdout")
    e.set_defaults(func=cmd_estimate)

    i = sub.add_parser("inspect", help="exact tensors, parameters and bytes of a config.json, "
                                       "safetensors checkpoint or GGUF file")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="one JSON document on stdout")
    i.set_defaults(func=cmd_inspect)

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
        sys.stderr.write(f"planner: error: {e}\n")
        return e.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("planner: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
