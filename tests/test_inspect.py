"""`planner inspect` on a real GGUF and on a safetensors checkpoint the test writes itself."""

import json

import numpy as np
import pytest

from planner_testutil import run_cli
from planner.catalog import lookup
from planner.inspect import inspect_path
from planner.spec import inventory, param_count


def test_smollm2_gguf_matches_the_inventory(gguf_path):
    import gguf  # the reference reader, a cross-check only

    reader = gguf.GGUFReader(gguf_path)
    ref_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    report = inspect_path(gguf_path)
    assert report["tensors"] == len(reader.tensors) == 272
    assert report["params"] == ref_params == 134_515_008
    assert report["bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    # The spec derived from the GGUF metadata reproduces every tensor name and shape.
    assert report["inventory"]["matches"], report["inventory"]
    assert report["inventory"]["params"] == ref_params
    assert report["model"]["kv_heads"] == 3 and report["model"]["tied_embeddings"] is True
    # ... and equals the catalog's SmolLM2-135M entry.
    assert param_count(lookup("smollm2-135m").spec) == ref_params


def test_inspect_cli_json(gguf_path):
    out = run_cli("inspect", gguf_path, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["params"] == 134_515_008 and doc["tensors"] == 272
    assert isinstance(doc["bytes"], int)
    assert doc["dtypes"]["Q8_0"]["tensors"] == 1  # token_embd is Q8_0 in this file


def write_tiny_llama(folder, tie=False):
    """A 2-layer Llama checkpoint (safetensors + config.json) written with the safetensors library."""
    from safetensors.numpy import save_file

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 100, "max_position_embeddings": 256, "tie_word_embeddings": tie,
           "torch_dtype": "float16"}
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = {}
    h, kv, f = 64, 2 * 16, 160
    tensors["model.embed_tokens.weight"] = np.zeros((100, h), np.float16)
    for i in range(2):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = np.ones(h, np.float16)
        tensors[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float16)
        tensors[f"{p}.self_attn.q_proj.weight"] = np.zeros((h, h), np.float16)
        tensors[f"{p}.self_attn.k_proj.weight"] = np.zeros((kv, h), np.float16)
        tensors[f"{p}.self_attn.v_proj.weight"] = np.zeros((kv, h), np.float16)
        tensors[f"{p}.self_attn.o_proj.weight"] = np.zeros((h, h), np.float16)
        tensors[f"{p}.mlp.gate_proj.weight"] = np.zeros((f, h), np.float16)
        tensors[f"{p}.mlp.up_proj.weight"] = np.zeros((f, h), np.float16)
        tensors[f"{p}.mlp.down_proj.weight"] = np.zeros((h, f), np.float16)
        tensors[f"{p}.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)  # a buffer
    tensors["model.norm.weight"] = np.ones(h, np.float16)
    if not tie:
        tensors["lm_head.weight"] = np.zeros((100, h), np.float16)
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def test_safetensors_checkpoint(tmp_path):
    tensors = write_tiny_llama(tmp_path / "tiny")
    report = inspect_path(str(tmp_path / "tiny"))
    assert report["format"] == "safetensors"
    assert report["tensors"] == len(tensors)
    assert report["params"] == sum(t.size for t in tensors.values())
    assert report["bytes"] == sum(t.nbytes for t in tensors.values())
    inv = report["inventory"]
    assert inv["matches"], inv
    assert inv["buffers_excluded"] == 2
    # Hand count: embed + head 2 x 6400, per layer 2 x 64 norms + 64x64 x 2 + 32x64 x 2 + 3 x 160x64,
    # final norm 64.
    assert inv["params"] == 2 * 6400 + 2 * (128 + 8192 + 4096 + 30720) + 64


def test_checkpoint_that_disagrees_with_its_config(tmp_path):
    write_tiny_llama(tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    inv = inspect_path(str(tmp_path / "bad"))["inventory"]
    assert not inv["matches"]
    assert any("mlp.gate_proj" in m and "[160, 64]" in m for m in inv["mismatches"])


def test_estimate_from_checkpoint_equals_catalog(gguf_path):
    a = run_cli("estimate", "--model", gguf_path, "--json", "--weights", "bf16")
    b = run_cli("estimate", "--model", "smollm2-135m", "--json", "--weights", "bf16")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["ranks"] == jb["ranks"]
    assert ja["model"]["params"] == sum(t.numel for t in inventory(lookup("smollm2").spec))


def test_estimate_with_stored_weights_uses_the_file_bytes(gguf_path):
    import gguf

    file_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(gguf_path).tensors)
    out = run_cli("estimate", "--model", gguf_path, "--weights", "stored", "--engine", "llama.cpp",
                  "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["precision"]["weights"] == "stored"
    assert doc["ranks"][0]["bytes"]["weights"] == file_bytes


def test_stored_weights_need_a_checkpoint():
    out = run_cli("estimate", "--model", "llama-2-7b", "--weights", "stored")
    assert out.returncode == 2 and "needs a checkpoint" in out.stderr
    assert "Traceback" not in out.stderr
