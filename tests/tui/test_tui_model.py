"""The TUI's computations without Textual: capacity map cells, parser registration, light import."""

from __future__ import annotations

import subprocess
import sys

from planner.memory import Workload, estimate
from planner.tui import model as M
from planner_testutil import REPO, run_cli


def test_capacity_map_cells_match_the_memory_model():
    res = M.compute(M.Inputs(model="glm-130b", gpus="4x3090"))
    assert res.ok
    cand = res.plans[0]
    grid = M.capacity_map(res.problem, cand)
    assert grid.contexts == (128, 256, 512, 1024, 2048)
    assert grid.batches[0] == 1
    states = set()
    for b, row in zip(grid.batches, grid.cells):
        for ctx, state in zip(grid.contexts, row):
            new = min(256, ctx - 1)
            est = estimate(res.problem.spec, cand.weights, cand.kv, cand.tp, cand.pp,
                           Workload(b, ctx - new, new), "runtime", "cuda")
            head = [u - r.total for u, r in zip(cand.usable, est.ranks)]
            want = ("no" if min(head) < 0 else
                    "tight" if any(h < 0.1 * u for h, u in zip(head, cand.usable)) else "fits")
            assert state == want, (b, ctx)
            states.add(state)
    assert states == {"fits", "tight", "no"}
    # monotone: more batch or more context never turns "no" into a fit
    order = {"fits": 0, "tight": 1, "no": 2}
    for i, row in enumerate(grid.cells):
        assert all(order[a] <= order[b] for a, b in zip(row, row[1:]))
        if i:
            assert all(order[a] <= order[b] for a, b in zip(grid.cells[i - 1], row))


def test_compute_reports_each_bad_field():
    res = M.compute(M.Inputs(model="glm-13b", gpus="4x3090", batch="0", prompt="x", new="-1"))
    assert set(res.errors) == {"model", "batch", "prompt", "new"}
    assert "did you mean" in res.errors["model"]
    res = M.compute(M.Inputs(model="glm-130b", gpus="4x3090", weights=()))
    assert "weights" in res.errors
    res = M.compute(M.Inputs(model="gpt2", gpus="3090", kv=("int8",)))
    assert res.ok and {c.kv.key for c in res.plans} == {"int8"}


def test_objectives_match_search():
    from planner import tui
    from planner.search import OBJECTIVES

    assert tui.OBJECTIVES == OBJECTIVES


def test_tui_subcommand_is_registered_and_import_is_light():
    out = run_cli("tui", "--help")
    assert out.returncode == 0, out.stderr
    for opt in ("--model", "--gpus", "--batch", "--prompt-tokens", "--new-tokens", "--engine",
                "--objective"):
        assert opt in out.stdout
    probe = ("import sys, planner.tui, planner.cli\nplanner.cli.build_parser()\n"
             "print(any(m.split('.')[0] == 'textual' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"
