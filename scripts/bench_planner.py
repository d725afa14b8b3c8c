"""Benchmark the planner's commands (a script, not a test): wall time of whole commands as a user
runs them, median of several runs, and one JSON line with unit-suffixed keys.

Targets (issue 3): `planner recommend --gpus 4x3090` (every catalog model) under 0.5 s, and a
10,000-configuration `planner sweep` under 2 s on one core.

    python scripts/bench_planner.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 10,000 configurations: 25 batches x 20 contexts x 10 weight formats x 2 KV formats.
SWEEP = ["sweep", "--model", "llama-2-70b", "--tp", "4",
         "--batch", ",".join(str(b) for b in range(1, 26)),
         "--context", ",".join(str(512 * i) for i in range(1, 21)),
         "--weights", "fp16,bf16,fp8,int8,llm-int8,int4-g128-zp,int4-g128,nf4,int4,absmax",
         "--kv-cache", "fp16,int8", "--format", "csv"]
COMMANDS = {
    "estimate_glm130b": ["estimate", "--model", "glm-130b", "--weights", "int4", "--tp", "4",
                         "--json"],
    "recommend_4x3090_all_models": ["recommend", "--gpus", "4x3090"],
    "recommend_glm130b_4x3090": ["recommend", "--gpus", "4x3090", "--model", "glm-130b"],
    "sweep_10000_configs": SWEEP,
}


def wall(args: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                         cwd=REPO)
    dt = time.perf_counter() - t
    if out.returncode not in (0, 1):
        raise SystemExit(f"planner {' '.join(args)} failed: {out.stderr.strip()}")
    return dt, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; one process per run (one core)")
    result = {}
    for name, args in COMMANDS.items():
        times = []
        for _ in range(runs):
            dt, stdout = wall(args)
            times.append(dt)
        med = statistics.median(times)
        rows = stdout.count("\n") - 1 if name.startswith("sweep") else None
        extra = f" ({rows:,} configurations)" if rows is not None else ""
        print(f"{name:32s} median {med:6.3f} s  min {min(times):6.3f} s{extra}")
        result[f"{name}_sec"] = round(med, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
