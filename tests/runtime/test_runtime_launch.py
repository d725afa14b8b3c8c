"""planner launch on CPU: measured weights and KV cache equal the prediction to the byte,
activations within the CPU tolerance (2%), TP 1 and TP 2 (gloo), bad input, no process left behind."""

from __future__ import annotations

import os
import struct

import pytest

from runtime_testutil import (LLAMA, MIXTRAL, OPT, launch, launch_and_check, make_plan,
                              report_of, rewrite)

CASES = [
    (LLAMA, "fp16", 1), (LLAMA, "bf16", 1), (LLAMA, "int8", 1), (LLAMA, "int4-g128", 1),
    (LLAMA, "fp16", 2), (LLAMA, "int4-g128", 2),
    (OPT, "fp16", 1), (OPT, "int8", 2),
    (MIXTRAL, "bf16", 1), (MIXTRAL, "int4-g128", 2),
]


@pytest.mark.parametrize("spec,weights,tp", CASES,
                         ids=[f"{s.family}-{w}-tp{t}" for s, w, t in CASES])
def test_measured_equals_predicted(tmp_path, spec, weights, tp):
    rep = launch_and_check(tmp_path, spec, weights, tp, "fp16", "--report",
                           str(tmp_path / "r.json"))
    assert rep["tokens_per_s"]["prefill"] > 0 and rep["tokens_per_s"]["decode"] > 0
    assert (tmp_path / "r.json").exists()


@pytest.mark.slow  # CI time (about 20 s); python -m pytest -m slow
def test_under_prediction_exits_1(tmp_path):
    plan = tmp_path / "plan.yaml"
    doc = make_plan(str(plan), LLAMA, "int8", "fp16", 2)
    for r in doc["prediction"]["ranks"]:
        r["bytes"]["activations"] //= 2
        r["bytes"]["weights"] -= 1
        r["bytes"]["total"] = sum(v for k, v in r["bytes"].items() if k != "total")
    rewrite(str(plan), doc)
    # --no-verify: an edited prediction is otherwise refused before any rank starts
    proc = launch(str(plan), "--json", "--no-verify")
    assert proc.returncode == 1, proc.stderr[-2000:]
    rep = report_of(proc)
    assert not rep["ok"]
    assert not rep["ranks"][0]["lines"]["weights"]["ok"]
    assert not rep["ranks"][0]["lines"]["activations"]["ok"]
    table = launch(str(plan), "--no-verify")
    assert table.returncode == 1 and "FAIL" in table.stdout


def test_plan_that_cannot_fit_is_refused(tmp_path):
    plan = tmp_path / "plan.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 1, batch=1 << 20, prompt=1024, new=0)
    proc = launch(str(plan))
    assert proc.returncode == 1
    assert "refusing" in proc.stderr and "MemAvailable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_more_ranks_than_devices(tmp_path):
    plan = tmp_path / "plan.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 2)
    proc = launch(str(plan), preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    assert proc.returncode == 2
    assert "2 rank(s)" in proc.stderr and "1 CPU core" in proc.stderr


def _our_processes(marker: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_timeout_leaves_no_worker(tmp_path):
    plan = tmp_path / "slowplan.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 2, batch=4, prompt=512, new=2000)
    proc = launch(str(plan), "--timeout", "4")
    assert proc.returncode == 124
    assert _our_processes(str(plan)) == []


def test_failing_ranks_leave_no_worker(tmp_path):
    plan = tmp_path / "badckpt.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 2)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\xff" * 40)
    proc = launch(str(plan), "--checkpoint", str(bad))
    assert proc.returncode != 0
    assert _our_processes(str(plan)) == []
