"""``planner tui``: the interactive planner (Textual).

This module only registers the subcommand; Textual is imported by :mod:`planner.tui.app` when the
command runs, so ``planner estimate`` and friends never pay for it.
"""

from __future__ import annotations

import argparse

from planner.objectives import DEFAULT_OBJECTIVE, OBJECTIVES


def add_parser(subparsers) -> None:
    """Register ``planner tui`` on the CLI's subparsers."""
    t = subparsers.add_parser(
        "tui", help="interactive planner: ranked plans, per-GPU memory bars, a capacity map")
    # Values are passed as typed: the TUI validates them inline next to their fields.
    t.add_argument("--model", "-m", default=None,
                   help="initial model: catalog name or path (ctrl+o in the TUI lists the "
                        "catalog); default the last one that gave plans, else qwen3-8b")
    t.add_argument("--gpus", "-g", default=None,
                   help="initial GPU set: 4x3090, 8xA100-40G, 2x4090+1x3090, cpu, local; default "
                        "the last one that gave plans, else this machine's GPUs (local), else "
                        "1x4090 where NVML sees none")
    t.add_argument("--batch", "-b", default="1", help="initial batch (default 1)")
    t.add_argument("--prompt-tokens", default="2048", help="initial prompt tokens (default 2048)")
    t.add_argument("--new-tokens", default="256", help="initial new tokens (default 256)")
    t.add_argument("--engine", "-e", default="runtime",
                   help="initial engine: runtime, vllm, transformers, llama.cpp")
    t.add_argument("--objective", choices=OBJECTIVES, default=DEFAULT_OBJECTIVE,
                   help=f"initial ranking: {', '.join(OBJECTIVES)} (default {DEFAULT_OBJECTIVE})")
    t.set_defaults(func=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    from planner.tui.app import PlannerApp  # deferred: textual loads only for this command
    from planner.tui.model import first_screen

    model, gpus = first_screen(args.model, args.gpus)
    app = PlannerApp(model=model, gpus=gpus, batch=args.batch,
                     prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                     engine=args.engine, objective=args.objective, remember=True)
    app.run()
    return app.return_code or 0
