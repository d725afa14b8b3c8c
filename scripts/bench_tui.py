"""Start-up time of `planner tui` to its first frame.

Each run is a fresh Python process (imports count, as for a user typing `planner tui`) started
with the parent's wall-clock launch time; it runs the app headless at 80×24 on GLM-130B / 4x3090
and prints, from the app's first ``call_after_refresh`` after mount (the first frame is painted),
the seconds since that launch. Prints each run, the median, and one JSON line.

    python scripts/bench_tui.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import sys, time
t0 = float(sys.argv[1])
from planner.tui.app import PlannerApp

class Bench(PlannerApp):
    def on_mount(self):
        super().on_mount()
        self.call_after_refresh(self._first_frame)

    def _first_frame(self):
        print("FIRST_FRAME", time.time() - t0, flush=True)
        self.exit()

import asyncio

async def main():
    app = Bench(model="glm-130b", gpus="4x3090")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()

asyncio.run(main())
"""


def one_run() -> float:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", PROBE, repr(t0)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST_FRAME"):
            return float(line.split()[1])
    raise SystemExit(f"probe failed:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    one_run()  # warm the OS file cache and .pyc files
    times = [one_run() for _ in range(args.runs)]
    med = statistics.median(times)
    print("runs (s): " + " ".join(f"{t:.3f}" for t in times))
    print(f"start-up to first frame: median {med:.3f} s over {args.runs} runs "
          f"(target < 1 s: {'ok' if med < 1 else 'MISSED'})")
    print(json.dumps({"tui_first_frame_median_sec": round(med, 4),
                      "tui_first_frame_runs_sec": [round(t, 4) for t in times],
                      "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
