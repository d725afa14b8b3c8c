"""Helpers shared by the quality tests (a plain module: no conftest.py here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FORMATS = "fp16,int8,int4-g128,int4-g64,int4,nf4,absmax"
"""What the shared SmolLM2 run measures. SmolLM2's linears have 576 inputs, not a multiple of 128:
int4-g128 is skipped with its reason and int4-g64 is the group-wise int4 row."""
TOKENS = 2048
PROMPT = "The capital of France is"


def planner(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m planner ARGS`` from the repository root, as a user runs it."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=env)


def row(doc: dict, key: str) -> dict:
    return next(r for r in doc["rows"] if r["weights"] == key)


def write_report(path, model: str, rows: list[tuple[str, float, float]], base_ppl: float = 10.0,
                 spec_hash: str | None = None) -> None:
    """A hand-written quality report: rows of (weights, perplexity, kl)."""
    doc = {"model": model, "base": {"weights": "bf16", "perplexity": base_ppl},
           "rows": [{"weights": w, "weight_bytes": 1, "perplexity": p, "kl": kl,
                     "top1_agreement": 0.9} for w, p, kl in rows]}
    if spec_hash:
        doc["spec_hash"] = spec_hash
    with open(path, "w") as f:
        json.dump(doc, f)


def stderr_ok(proc: subprocess.CompletedProcess) -> bool:
    """A clean user error: no traceback."""
    return "Traceback" not in proc.stderr


def make_plan(path: str, spec, weights: str, kv: str, source: tuple[str, str]) -> dict:
    """A CPU plan file for one rank (batch 1, prompt 16 + new 4) whose source is ``source``."""
    from planner.memory import Workload, estimate
    from planner.plan import plan_document, write_plan
    from planner.sources import ModelSource

    est = estimate(spec, weights, kv, 1, 1, Workload(1, 16, 4), "runtime", device="cpu")
    doc = plan_document(est, ModelSource(spec, source[0], source[1]), {"set": "cpu:1", "gpus": []})
    write_plan(path, doc, force=True)
    return doc
