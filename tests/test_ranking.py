"""The default ranking (objective serve) gives the answers a practitioner would (issue 13): the
fewest GPUs that keep the safety margin free, lossless before 8-bit before lower bit-widths."""

from __future__ import annotations

import json

import pytest

from planner.catalog import lookup
from planner.errors import InputError
from planner.hardware import parse_gpu_set
from planner.memory import Workload
from planner.search import DEFAULT_MARGIN, Margin, make_problem, parse_margin, search

from planner_testutil import run_cli

GiB = 1 << 30


def best(model: str, gpus: str, **kw):
    p = make_problem(lookup(model).spec, parse_gpu_set(gpus), Workload(1, 2048, 256), "runtime",
                     **kw)
    plans, _ = search(p, finish_top=1)
    return plans


def test_small_models_take_one_gpu():
    assert best("gpt2", "4x3090")[0].gpus == 1
    assert best("llama-2-7b", "64xh100-sxm")[0].gpus <= 2


def test_mistral_nemo_on_a_4090_keeps_the_margin_free():
    """fp16 fits one 4090 with ~150 MiB to spare (0.6%): not what anyone runs. The first plan
    keeps 1 GiB (> 5% of 24 GiB is 1.2 GiB) free; with no margin the lossless plan is first."""
    plans = best("mistral-nemo", "1x4090")
    first = plans[0]
    assert first.comfortable and first.headroom >= max(GiB, int(0.05 * first.usable[0]))
    tight = [c for c in plans if c.weights.key == "fp16" and c.kv.key == "fp16"]
    assert tight and not tight[0].comfortable and tight[0].headroom < GiB
    assert plans.index(tight[0]) > plans.index(first)
    loose = best("mistral-nemo", "1x4090", margin=Margin(0.0, 0))
    assert (loose[0].weights.key, loose[0].kv.key) == ("fp16", "fp16")


def test_engine_cap_counts_toward_the_margin():
    """vLLM's 0.9 utilization already leaves 10% of the card unused: nothing more is asked."""
    mem = 24 * GiB
    assert DEFAULT_MARGIN.required(mem, int(mem * 0.9)) == 0
    assert DEFAULT_MARGIN.required(mem, mem) == int(mem * 0.05)
    assert DEFAULT_MARGIN.required(16 * GiB, 16 * GiB) == GiB  # 5% of 16 GiB is less than 1 GiB
    assert Margin(0.0, 2 * GiB).required(mem, mem - GiB) == GiB


@pytest.mark.parametrize("text,want", [("5%", Margin(0.05, 0)), ("2GiB", Margin(0.0, 2 * GiB)),
                                       ("5%,1GiB", Margin(0.05, GiB)), ("0", Margin(0.0, 0)),
                                       ("3GB", Margin(0.0, 3 * 10**9))])
def test_parse_margin(text, want):
    assert parse_margin(text) == want


@pytest.mark.parametrize("text", ["", "5", "150%", "nan%", "1GiB,2GiB,3%", "-1GiB", "x%"])
def test_bad_margin_is_one_line(text):
    with pytest.raises(InputError):
        parse_margin(text)
    r = run_cli("recommend", "--gpus", "1x4090", "--model", "gpt2", "--margin", text)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_default_is_serve_and_reports_the_margin():
    r = run_cli("recommend", "--gpus", "1x4090", "--model", "mistral-nemo", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["objective"] == "serve" and doc["plans"][0]["keeps_margin"]
    q = json.loads(run_cli("recommend", "--gpus", "1x4090", "--model", "mistral-nemo",
                           "--objective", "quality", "--json").stdout)
    assert q["plans"][0]["precision"] == {"weights": "fp16", "kv_cache": "fp16"}


def test_mixed_set_tp_group_is_identical_cards_and_pinned(tmp_path):
    """Llama-2-13B TP 2 on 2x4090+1x3090: both ranks on the 4090s (a TP group needs identical
    cards; the 3090 has slightly more memory, so memory order alone picked it), at the speed of
    2x4090, and every export pins those GPUs."""
    from planner.export import export_command
    from planner.plan import load_plan
    from planner.precision import kv_format, weight_format
    from planner.search import evaluate, finish

    spec = lookup("llama-2-13b").spec
    wl = Workload(1, 2048, 256)

    def plan(gpus):
        p = make_problem(spec, parse_gpu_set(gpus), wl, "runtime")
        return finish(p, evaluate(p, weight_format("fp16"), kv_format("fp16"), 2, 1))

    mixed, same = plan("2x4090+1x3090"), plan("2x4090")
    assert [d.profile.name for d in mixed.devices] == ["rtx-4090", "rtx-4090"]
    assert [d.index for d in mixed.devices] == [0, 1]
    assert mixed.roofline.decode_tokens_per_s == same.roofline.decode_tokens_per_s
    path = str(tmp_path / "p.yaml")
    r = run_cli("recommend", "--gpus", "2x4090+1x3090", "--model", "llama-2-13b", "--tp", "2",
                "--weights", "fp16", "--kv-cache", "fp16", "-o", path)
    assert r.returncode == 0, r.stderr
    for engine in ("vllm", "sglang", "trtllm"):
        argv, notes = export_command(load_plan(path), engine)
        assert argv[:3] == ["env", "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=0,1"]
        assert any("rank 1 on GPU 1 (rtx-4090)" in n for n in notes)


def test_tp_over_unlike_cards_is_one_line():
    r = run_cli("recommend", "--gpus", "1x4090+1x3090", "--model", "llama-2-7b", "--tp", "2")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 identical GPUs" in lines[0], r.stderr
