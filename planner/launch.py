"""``planner launch PLAN``: run a plan in the runtime and report measured memory against the prediction.

The planner never imports the runtime (or torch): this starts ``python -m runtime PLAN`` for one rank,
or ``python -m torch.distributed.run --nproc-per-node N --standalone -m runtime PLAN`` for N ranks, in
a new process group, and forwards its exit code. On failure, Ctrl-C or a timeout the whole group is
killed, so no worker is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from planner.errors import InputError
from planner.units import seconds_arg, tokens_arg


def _port(text: str) -> int:
    import argparse

    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--master-port must be a TCP port 1..65535, got {text!r}")
    return int(text)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "launch", help="run a plan with the real kernels and measure memory against the prediction",
        description=__doc__.split("\n")[0])
    p.add_argument("plan", help="plan file")
    p.add_argument("--checkpoint", help="safetensors file/folder or GGUF file (default: the plan's "
                                        "checkpoint source if it has one, else random weights)")
    p.add_argument("--random-weights", action="store_true",
                   help="deterministic random weights even if the plan names a checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON report on stdout")
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--force", action="store_true",
                   help="run even when the prediction exceeds the free memory detected (or it "
                        "cannot be detected), and a CPU plan with more ranks than cores")
    p.add_argument("--no-verify", action="store_true",
                   help="trust the plan file as written: skip its hash check and the "
                        "recomputation of its prediction (to measure an edited prediction)")
    p.add_argument("--timeout", type=seconds_arg("--timeout"), default=0,
                   help="kill every rank after this many seconds (0 = no limit)")
    p.add_argument("--dry-run", action="store_true", help="print the command(s) and exit")
    p.add_argument("--nodes", type=tokens_arg("--nodes"), default=1, metavar="N",
                   help="spread the ranks over this many hosts: prints the torchrun command to "
                        "run on each node (with --master-addr) instead of starting anything")
    p.add_argument("--master-addr", default=None, help="rendezvous host for --nodes > 1")
    p.add_argument("--master-port", type=_port, default=29500, help="rendezvous port (default 29500)")
    q = p.add_argument_group("quality (one process at TP 1 with the checkpoint's tokenizer; no "
                             "memory measurement)")
    q.add_argument("--eval", action="store_true",
                   help="measure perplexity, KL and top-1 agreement of the plan's weight format "
                        "against the checkpoint dequantized to the activation dtype")
    q.add_argument("--eval-text", default=None,
                   help="UTF-8 text to evaluate on (default: the standard library's pydoc_data)")
    q.add_argument("--eval-tokens", type=tokens_arg("--eval-tokens", 2), default=None, metavar="N",
                   help="evaluate the first N tokens of the text (default 4096)")
    q.add_argument("--eval-window", type=tokens_arg("--eval-window", 2), default=None, metavar="N", help="sliding window (default 512)")
    q.add_argument("--eval-stride", type=tokens_arg("--eval-stride"), default=None, metavar="N", help="window stride (default 256)")
    q.add_argument("--tokenizer", default=None,
                   help="tokenizer.json or GGUF (default: the checkpoint's own)")
    q.add_argument("--prompt", default=None,
                   help="print the greedy continuation of this text in the plan's format")
    q.add_argument("--max-new-tokens", type=tokens_arg("--max-new-tokens"), default=None,
                   metavar="N",
                   help="tokens --prompt generates (default 32)")
    p.set_defaults(func=cmd_launch)


RUNTIME_MODULES = ("torch", "numpy", "safetensors", "gguf")
"""What the runtime imports; the base install has none of them (``pip install 'planner[runtime]'``)."""


def require_runtime(command: str, extra_modules: tuple[str, ...] = ()) -> None:
    """One line naming the extra to install when the runtime's dependencies are missing."""
    import importlib.util

    missing = [m for m in (*RUNTIME_MODULES, *extra_modules) if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"{command} needs the runtime extra ({', '.join(missing)} not installed): "
                         "pip install 'planner[runtime]' (CPU only: pip install torch==2.13.0 first)")


def _device_count(device: str) -> tuple[int, str]:
    if device == "cpu":
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:
            n = os.cpu_count() or 1
        return n, "CPU core(s) available to this process"
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([v for v in vis.split(",") if v.strip()]), "GPU(s) in CUDA_VISIBLE_DEVICES"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return len([l for l in out.stdout.splitlines() if l.startswith("GPU ")]), "GPU(s) (nvidia-smi -L)"
    except (OSError, subprocess.TimeoutExpired):
        return 0, "GPU(s): nvidia-smi not found"


def build_command(plan_path: str, ranks: int, extra: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "runtime", plan_path, *extra]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--standalone", "-m", "runtime", plan_path, *extra]


def cmd_launch(args: argparse.Namespace) -> int:
    from planner.plan import load_plan

    plan = load_plan(args.plan, verify=not args.no_verify)
    _check_paths(args, plan)  # in the parent, before any rank could block on a FIFO
    quality = bool(getattr(args, "eval", False) or getattr(args, "prompt", None) is not None)
    ranks = 1 if quality else plan.tp * plan.pp  # the eval runs TP 1 in one process
    if args.nodes != 1:
        return _print_multinode(args, ranks)
    have, what = _device_count(plan.device)
    if ranks > have and plan.device == "cpu" and args.force:
        print(f"planner: warning: {ranks} CPU ranks on {have} core(s): oversubscribed (--force), "
              "expect it to run slowly", file=sys.stderr)
    elif ranks > have:
        raise InputError(f"{args.plan}: the plan needs {ranks} rank(s) (TP {plan.tp} x PP "
                         f"{plan.pp}) but this host has {have} {what}; "
                         + ("--force runs them oversubscribed, or " if plan.device == "cpu" else "")
                         + "to spread it over several hosts, --nodes N --master-addr HOST prints "
                         "each node's command")
    extra: list[str] = []
    for flag in ("checkpoint", "report"):
        if getattr(args, flag):
            extra += [f"--{flag}", os.path.abspath(getattr(args, flag))]
    for flag in ("random_weights", "json", "force", "no_verify"):
        if getattr(args, flag):
            extra.append("--" + flag.replace("_", "-"))
    extra += ["--seed", str(args.seed)]
    if quality:
        if args.eval:
            extra.append("--eval")
        for flag in ("eval_text", "tokenizer"):
            if getattr(args, flag):
                extra += [f"--{flag.replace('_', '-')}", os.path.abspath(getattr(args, flag))]
        for flag in ("eval_tokens", "eval_window", "eval_stride", "max_new_tokens", "prompt"):
            if getattr(args, flag) is not None:
                extra += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd = build_command(os.path.abspath(args.plan), ranks, extra)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    require_runtime("planner launch", ("tokenizers",) if quality else ())
    return run_group(cmd, args.timeout or None)


def _check_paths(args: argparse.Namespace, plan) -> None:
    """Stat every path a rank will open (planner.paths): a FIFO, device, loop or unreadable
    folder fails here in one line instead of blocking every rank."""
    from planner.paths import check_input, check_model_arg, check_output

    ckpt = args.checkpoint
    if ckpt is None and not args.random_weights and plan.source.get("kind") in (
            "safetensors", "safetensors-sharded", "gguf"):
        ckpt = plan.source.get("path")
    if ckpt:
        check_input(ckpt, "any", "checkpoint")
        check_model_arg(ckpt)
    for flag, what in (("eval_text", "text file"), ("tokenizer", "tokenizer file")):
        if getattr(args, flag, None):
            check_input(getattr(args, flag), "file", what)
    if args.report:
        check_output(args.report, force=True)  # overwritten if a regular file, else refused


def multinode_commands(plan_path: str, ranks: int, nodes: int, master_addr: str,
                       master_port: int, extra: list[str] = ()) -> list[list[str]]:
    """The torchrun command for each node of a multi-node launch (node rank i on the i-th host)."""
    if nodes < 1 or ranks % nodes:
        raise InputError(f"--nodes {nodes} must divide the plan's {ranks} ranks")
    per = ranks // nodes
    return [["python", "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank",
             str(i), "--nproc-per-node", str(per), "--master-addr", master_addr,
             "--master-port", str(master_port), "-m", "runtime", plan_path, *extra]
            for i in range(nodes)]


def _print_multinode(args: argparse.Namespace, ranks: int) -> int:
    import shlex

    if not args.master_addr:
        raise InputError("--nodes > 1 needs --master-addr HOST (the host of node 0)")
    if args.eval or args.prompt is not None:
        raise InputError("--eval and --prompt run in one process; drop --nodes")
    cmds = multinode_commands(args.plan, ranks, args.nodes, args.master_addr, args.master_port)
    print(f"# {ranks} ranks over {args.nodes} nodes; run each line on its node, with the plan "
          f"file at the same path and the project installed:")
    for i, c in enumerate(cmds):
        print(f"# node {i}\n{shlex.join(c)}")
    return 0


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the planner while its children ran; the CLI exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_group(cmd: list[str], timeout: float | None) -> int:
    """Run ``cmd`` in its own process group; kill the whole group if it fails, times out or we are
    interrupted (Ctrl-C, SIGTERM, SIGHUP: the group is killed at once, so no rank is left and none
    prints a traceback, then KeyboardInterrupt / :class:`Stopped` goes up to the CLI's one line).
    Returns the exit code (124 on timeout)."""
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1" if "torch.distributed.run" in cmd else env.get(
        "OMP_NUM_THREADS", str(os.cpu_count() or 1)))

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: no handlers, the caller owns signals
        pass
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if deadline and time.monotonic() > deadline:
                        print(f"planner: error: launch timed out after {timeout:g} s; stopping "
                              "every rank", file=sys.stderr)
                        _kill_group(proc)
                        return 124
        except BaseException:
            _kill_group(proc, at_once=True)
            raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _kill_group(proc)  # a rank that failed may leave siblings behind; the group goes with it
    if rc < 0:
        print(f"planner: error: the runtime was killed by signal {-rc}", file=sys.stderr)
        return 1
    return rc


def _kill_group(proc: subprocess.Popen, at_once: bool = False) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after 5 s (``at_once``: SIGKILL
    straight away, for an interrupt: torchrun answers SIGTERM with a 30-line traceback)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL if at_once else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(50):
        try:
            proc.wait(timeout=0)  # reap the leader, or killpg(…, 0) sees a zombie forever
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
