"""The llama.cpp profile against llama.cpp itself (issue 11).

``planner verify --engine llama.cpp`` runs llama.cpp through llama-cpp-python on the SmolLM2-135M
Q4_1 GGUF and compares what llama.cpp allocated (its log lines, in bytes from the allocations it
made) with the planner's prediction. The oracle is llama.cpp: no expected value here is computed by
the code under test.
"""

from __future__ import annotations

import json
import sys

import pytest

from planner.cli import main

# Every n_ctx x n_ubatch x (cache type, flash attention) of issue 11: the f16 cache with and
# without flash attention (without it, the KQ score matrix grows with n_ctx) and the q8_0 cache,
# which needs flash attention (llama.cpp refuses a quantized V cache without it). About 0.7 s each.
CASES = [(ctx, ubatch, kv, fa) for ctx in (512, 2048, 8192) for ubatch in (128, 512)
         for kv, fa in (("fp16", "off"), ("fp16", "on"), ("q8_0", "on"))]


def _verify(capsys, *argv: str) -> tuple[int, dict]:
    rc = main(["verify", "--engine", "llama.cpp", "--device", "cpu", "--json", *argv])
    out = capsys.readouterr().out
    return rc, json.loads(out)


@pytest.mark.parametrize("ctx,ubatch,kv,fa", CASES)
def test_verify_matches_llama_cpp(gguf_path, capsys, ctx, ubatch, kv, fa):
    pytest.importorskip("llama_cpp")
    rc, doc = _verify(capsys, "-m", gguf_path, "--context", str(ctx), "--ubatch", str(ubatch),
                      "--kv-cache", kv, "--flash-attn", fa)
    lines = doc["lines"]
    assert doc["weights"] == "stored"  # a GGUF is planned as stored by default
    assert doc["config"] == {"n_ctx": ctx, "n_ubatch": ubatch, "n_seq": 1,
                             "cache_type": {"fp16": "f16"}.get(kv, kv), "flash_attn": fa}
    # every measured buffer is llama.cpp's own: its log line, to the byte from its allocation
    for name in ("model_buffer", "kv_buffer", "compute_buffer", "output_buffer"):
        line = lines[name]
        assert line["exact_bytes"], name
        assert abs(line["measured"] / 2**20 - line["logged_mib"]) <= 0.005, name
    assert lines["model_buffer"]["measured"] == lines["model_buffer"]["predicted"]
    assert lines["kv_buffer"]["measured"] == lines["kv_buffer"]["predicted"]
    assert lines["output_buffer"]["measured"] == lines["output_buffer"]["predicted"]
    for name in ("compute_buffer", "total"):
        p, m = lines[name]["predicted"], lines[name]["measured"]
        assert abs(m - p) <= 0.05 * p, (name, p, m)
    assert rc == 0 and doc["ok"]


def test_verify_table(gguf_path, capsys):
    pytest.importorskip("llama_cpp")
    rc = main(["verify", "--engine", "llama.cpp", "--device", "cpu", "-m", gguf_path,
               "--context", "1000"])  # padded to 1024 cells by llama.cpp
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("model_buffer", "kv_buffer", "compute_buffer", "output_buffer", "total"):
        assert name in out
    assert "result: PASS" in out


# -- user mistakes: one line on stderr, exit 2 ---------------------------------------------------

def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("planner: error: "), err
    return err


def test_engine_not_installed(gguf_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    err = _one_line_error(capsys, ["verify", "--engine", "llama.cpp", "--device", "cpu",
                                   "-m", gguf_path, "--context", "512"])
    assert "pip install llama-cpp-python" in err


def test_non_gguf_model(capsys):
    err = _one_line_error(capsys, ["verify", "--engine", "llama.cpp", "--device", "cpu",
                                   "-m", "llama-2-7b", "--context", "512"])
    assert "GGUF" in err


def test_gpu_device_is_refused_with_the_fix(gguf_path, capsys):
    err = _one_line_error(capsys, ["verify", "--engine", "llama.cpp", "-m", gguf_path,
                                   "--device", "cuda", "--context", "512"])
    assert "--device cpu" in err


def test_quantized_v_cache_needs_flash_attention(gguf_path, capsys):
    err = _one_line_error(capsys, ["estimate", "--engine", "llama.cpp", "--device", "cpu",
                                   "-m", gguf_path, "-w", "stored", "--kv-cache", "q8_0",
                                   "--flash-attn", "off"])
    assert "--flash-attn on" in err


# -- what the GPU plan moves to the host (not measured here: the CPU backend holds everything) ----

def test_token_embedding_stays_on_the_host(gguf_path):
    from planner.inspect import stored_bytes
    from planner.memory import Workload, estimate
    from planner.paths import resolve_model

    src = resolve_model(gguf_path)
    stored = stored_bytes(src)
    emb = stored["model.embed_tokens.weight"]
    wl = Workload(1, 512, 0)
    cpu = estimate(src.spec, "fp16", "fp16", 1, 1, wl, "llama.cpp", "cpu", stored=stored).ranks[0]
    gpu = estimate(src.spec, "fp16", "fp16", 1, 1, wl, "llama.cpp", "cuda", stored=stored).ranks[0]
    assert cpu.weights == sum(stored.values())
    assert gpu.detail["host"] == {"embedding": emb}
    # SmolLM2 ties its LM head to the embedding: llama.cpp loads it again for the output layer on
    # the GPU, so the GPU holds the same bytes and the host one more copy
    assert src.spec.tied_embeddings and gpu.weights == cpu.weights
