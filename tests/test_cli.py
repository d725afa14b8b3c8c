"""The command line as a user runs it (`python -m planner` in a subprocess).

Success paths check the JSON documents' shape and a few published or hand-derived numbers; every
user mistake must be exactly one line on stderr starting with ``planner: error:``, exit code 2, and no
traceback.
"""

from __future__ import annotations

import json
import struct
import sys
import time

import pytest

from planner import catalog

from planner_testutil import run_cli


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def ok_json(*args: str) -> dict:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)  # json.loads rejects anything after the one document


def assert_user_error(r, *fragments: str, code: int = 2) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("planner: error:"), r.stderr
    assert lines[0][len("planner: error:"):].strip(), r.stderr
    assert r.stdout == "", r.stdout
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# -- estimate --json -------------------------------------------------------------------------------

def test_estimate_json_shape():
    tp, pp = 2, 2
    doc = ok_json("estimate", "--model", "llama-2-7b", "--tp", str(tp), "--pp", str(pp),
                  "--batch", "3", "--prompt-tokens", "100", "--new-tokens", "20",
                  "--weights", "bf16", "--kv-cache", "fp8", "--engine", "vllm", "--json")
    assert isinstance(doc["model"]["name"], str) and doc["model"]["name"]
    # Llama-2-7b: 6,738,415,616 parameters (llama.cpp prints 6.74 B; HF total_size / 2).
    assert is_int(doc["model"]["params"]) and doc["model"]["params"] == 6_738_415_616
    assert doc["engine"] == "vllm"
    assert doc["precision"]["weights"] == "bf16" and doc["precision"]["kv_cache"] == "fp8"
    assert is_int(doc["layout"]["tp"]) and doc["layout"]["tp"] == tp
    assert is_int(doc["layout"]["pp"]) and doc["layout"]["pp"] == pp
    wl = doc["workload"]
    assert (wl["batch"], wl["prompt_tokens"], wl["new_tokens"]) == (3, 100, 20)
    assert all(is_int(wl[k]) for k in ("batch", "prompt_tokens", "new_tokens"))
    ranks = doc["ranks"]
    assert isinstance(ranks, list) and len(ranks) == tp * pp
    assert sorted(r["rank"] for r in ranks) == list(range(tp * pp))
    for r in ranks:
        assert is_int(r["rank"])
        b = r["bytes"]
        for k in ("weights", "kv_cache", "activations", "overhead", "total"):
            assert is_int(b[k]) and b[k] >= 0, (k, b)
        assert b["weights"] > 0 and b["kv_cache"] > 0
        assert b["total"] == b["weights"] + b["kv_cache"] + b["activations"] + b["overhead"]


def test_estimate_json_defaults_single_rank():
    doc = ok_json("estimate", "-m", "gpt2", "--json")
    # GPT-2: 124,439,808 parameters with tied embeddings (38,597,376 token + 786,432 position
    # embeddings + 12 x 7,087,872 per block + 1,536 final LayerNorm).
    assert doc["model"]["params"] == 124_439_808
    assert doc["layout"]["tp"] == 1 and doc["layout"]["pp"] == 1
    assert len(doc["ranks"]) == 1
    assert isinstance(doc["engine"], str) and doc["engine"]
    assert isinstance(doc["precision"]["weights"], str)
    assert isinstance(doc["precision"]["kv_cache"], str)


def test_estimate_fp16_weights_bytes_at_least_two_per_param():
    # fp16 weights are 2 bytes a parameter: Llama-2-7b at TP 1 holds >= 2 x 6,738,415,616 bytes.
    doc = ok_json("estimate", "-m", "llama-2-7b", "--weights", "fp16", "--json")
    assert doc["ranks"][0]["bytes"]["weights"] >= 2 * 6_738_415_616


def test_estimate_context_minus_new_tokens():
    doc = ok_json("estimate", "-m", "llama-2-7b", "--context", "4096", "--new-tokens", "96",
                  "--json")
    # prompt = 4096 - 96 = 4000
    assert doc["workload"]["prompt_tokens"] == 4000
    assert doc["workload"]["new_tokens"] == 96


def test_estimate_from_config_json(tmp_path):
    from test_sources import LLAMA_2_7B  # noqa: PLC0415  (same directory)

    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_2_7B))
    doc = ok_json("estimate", "-m", str(path), "--json")
    assert doc["model"]["params"] == 6_738_415_616  # as above


def test_int4_g128_tp2_llama_2_7b_is_feasible():
    # down_proj input at TP 2 is 11008 / 2 = 5504 = 43 x 128: a whole number of groups.
    doc = ok_json("estimate", "-m", "llama-2-7b", "--weights", "int4-g128", "--tp", "2", "--json")
    assert len(doc["ranks"]) == 2


# -- inspect and models ----------------------------------------------------------------------------

def test_inspect_gguf_json(gguf_path):
    doc = ok_json("inspect", gguf_path, "--json")
    assert is_int(doc["params"]) and is_int(doc["bytes"]) and is_int(doc["tensors"])
    # SmolLM2-135M: 134,515,008 parameters in 272 tensors (30 layers x 9 + embed + final norm).
    assert doc["params"] == 134_515_008
    assert doc["tensors"] == 30 * 9 + 2
    # This GGUF stores token_embd (49152 x 576 = 28,311,552) as Q8_0 (34 bytes / 32),
    # the 61 norms (61 x 576 = 35,136) as F32 and the rest (106,168,320) as Q4_1 (20 bytes / 32):
    # 30,081,024 + 140,544 + 66,355,200 = 96,576,768 bytes.
    assert doc["bytes"] == 96_576_768


def test_inspect_gguf_table(gguf_path):
    r = run_cli("inspect", gguf_path)
    assert r.returncode == 0, r.stderr
    assert "134,515,008" in r.stdout


def test_models_json_lists_catalog():
    doc = ok_json("models", "--json")
    names = {m["name"] for m in doc["models"]}
    assert names == {e.spec.name for e in catalog.entries()}
    for m in doc["models"]:
        assert is_int(m["params"]) and m["params"] > 0
        assert isinstance(m["source"], str) and m["source"]
    by_name = {m["name"]: m for m in doc["models"]}
    assert by_name["gpt2"]["params"] == 124_439_808            # published, see above
    assert by_name["bigscience/bloom"]["params"] == 176_247_271_424  # bigscience/bloom card


def test_models_table():
    r = run_cli("models")
    assert r.returncode == 0, r.stderr
    assert "meta-llama/Llama-2-7b-hf" in r.stdout and "gpt2" in r.stdout


# -- tables ----------------------------------------------------------------------------------------

def test_estimate_table():
    r = run_cli("estimate", "--model", "mistral-7b", "--tp", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "mistralai/Mistral-7B-v0.1" in r.stdout
    for word in ("weights", "kv_cache", "activations", "overhead", "total"):
        assert word in r.stdout
    with pytest.raises(ValueError):
        json.loads(r.stdout)


# -- user mistakes ---------------------------------------------------------------------------------

E = ["estimate", "--model"]

BAD = [
    ("unknown-model", E + ["llama-2-7"], ["'llama-2-7b'"]),
    ("unknown-weights", E + ["gpt2", "--weights", "int5"], ["int5"]),
    ("unknown-kv", E + ["gpt2", "--kv-cache", "fp7"], ["fp7"]),
    ("unknown-engine", E + ["gpt2", "--engine", "tgi"], ["tgi"]),
    ("batch-0", E + ["gpt2", "--batch", "0"], ["--batch"]),
    ("batch-neg", E + ["gpt2", "--batch", "-3"], ["--batch"]),
    ("batch-abc", E + ["gpt2", "--batch", "abc"], ["--batch"]),
    ("batch-float", E + ["gpt2", "--batch", "1.5"], ["--batch"]),
    ("prompt-0", E + ["gpt2", "--prompt-tokens", "0"], ["--prompt-tokens"]),
    ("new-neg", E + ["gpt2", "--new-tokens", "-1"], ["--new-tokens"]),
    ("tp-0", E + ["gpt2", "--tp", "0"], ["--tp"]),
    ("pp-0", E + ["gpt2", "--pp", "0"], ["--pp"]),
    ("batch-huge", E + ["gpt2", "--batch", "9" * 40], []),
    # Llama-2-7b has 32 heads: 32 % 3 = 2.
    ("tp3-llama", E + ["llama-2-7b", "--tp", "3"], ["does not divide"]),
    # Mistral-7B has 32 heads and 8 KV heads: 32 % 5 = 2.
    ("tp5-mistral", E + ["mistral-7b", "--tp", "5"], ["does not divide"]),
    # GPT-2 has 12 layers.
    ("pp100-gpt2", E + ["gpt2", "--pp", "100"], ["12"]),
    # Llama-2-7b down_proj input at TP 4: 11008 / 4 = 2752 = 21.5 x 128, not whole groups.
    ("int4-g128-tp4", E + ["llama-2-7b", "--weights", "int4-g128", "--tp", "4"], ["128"]),
    ("llamacpp-tp", E + ["llama-2-7b", "--engine", "llama.cpp", "--tp", "2"], ["--pp"]),
    ("vllm-kv-int4", E + ["llama-2-7b", "--engine", "vllm", "--kv-cache", "int4"], ["int4"]),
    ("q4k-runtime", E + ["llama-2-7b", "--weights", "q4_k"], ["q4_k"]),
    ("context-eq-new", E + ["gpt2", "--context", "10", "--new-tokens", "10"], ["--context"]),
    ("context-mismatch", E + ["gpt2", "--context", "100", "--prompt-tokens", "50",
                              "--new-tokens", "10"], ["--context"]),
    ("missing-path", E + ["./nope/config.json"], ["./nope/config.json"]),
    ("no-model-flag", ["estimate"], ["--model"]),
    ("inspect-missing", ["inspect", "./nope/model.gguf"], ["./nope/model.gguf"]),
    ("inspect-no-path", ["inspect"], []),
    ("unknown-subcommand", ["frobnicate"], ["frobnicate"]),
    ("unknown-flag", E + ["gpt2", "--frobnicate"], ["--frobnicate"]),
]


@pytest.mark.parametrize("argv,fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(argv, fragments):
    assert_user_error(run_cli(*argv), *fragments)


def test_no_subcommand():
    assert_user_error(run_cli())


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_malformed_config_path(tmp_path):
    path = _write(tmp_path, "config.json", b'{"model_type": "llama", hidden_size: 4096}')
    assert_user_error(run_cli("estimate", "-m", path), path)


def test_truncated_config(tmp_path):
    from test_sources import LLAMA_2_7B  # noqa: PLC0415

    text = json.dumps(LLAMA_2_7B, indent=2).encode()
    path = _write(tmp_path, "config.json", text[: len(text) // 2])
    assert_user_error(run_cli("estimate", "-m", path), path)


def test_config_wrong_type_via_cli(tmp_path):
    from test_sources import GPT2  # noqa: PLC0415

    path = _write(tmp_path, "config.json", json.dumps({**GPT2, "n_embd": "768"}).encode())
    assert_user_error(run_cli("estimate", "-m", path), path)


def test_moe_expert_explosion_via_cli(tmp_path):
    from test_sources import MIXTRAL_8X7B  # noqa: PLC0415

    cfg = {**MIXTRAL_8X7B, "num_local_experts": 65536, "num_hidden_layers": 10000,
           "hidden_size": 64, "intermediate_size": 16, "num_attention_heads": 1,
           "num_key_value_heads": 1, "vocab_size": 10}
    path = _write(tmp_path, "config.json", json.dumps(cfg).encode())
    t0 = time.perf_counter()
    assert_user_error(run_cli("estimate", "-m", path, "--json"), path)
    assert time.perf_counter() - t0 < 10


def test_corrupt_gguf(tmp_path):
    path = _write(tmp_path, "model.gguf", b"GGUF" + bytes(range(7, 200)) * 3)
    assert_user_error(run_cli("estimate", "-m", path))
    assert_user_error(run_cli("inspect", path))


def test_safetensors_huge_header(tmp_path):
    # The first 8 bytes are the little-endian header length: claim 2**60 bytes of JSON.
    path = _write(tmp_path, "model.safetensors", struct.pack("<Q", 1 << 60) + b"{}")
    assert_user_error(run_cli("estimate", "-m", path))
    assert_user_error(run_cli("inspect", path))


def test_inspect_empty_file(tmp_path):
    path = _write(tmp_path, "model.gguf", b"")
    assert_user_error(run_cli("inspect", path))


# -- speed -----------------------------------------------------------------------------------------

def test_estimate_is_fast():
    args = ("estimate", "-m", "glm-130b", "--weights", "int4", "--tp", "4", "--json")
    run_cli(*args)  # warm the filesystem cache
    t0 = time.perf_counter()
    r = run_cli(*args)
    elapsed = time.perf_counter() - t0
    print(f"planner estimate --json (glm-130b int4 tp 4): {elapsed:.3f} s wall "
          f"(python {sys.version.split()[0]})")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    assert elapsed < 1.5


@pytest.mark.parametrize("args,fragment", [
    (("-e", "runtime", "--ubatch", "128"), "engine runtime has no --ubatch (an option of llama.cpp)"),
    (("-e", "llama.cpp", "--gpu-memory-utilization", "0.8"), "has no --gpu-memory-utilization"),
    (("-e", "vllm", "--attention", "eager"), "an option of transformers"),
    (("-e", "transformers", "--block-size", "32"), "an option of vllm"),
    (("-e", "llama.cpp", "--flash-attn", "maybe"), "must be on or off"),
    (("-e", "vllm", "--gpu-memory-utilization", "nan"), "must be a number in (0, 1]"),
    (("-e", "vllm", "--max-num-seqs", "0"), "--max-num-seqs"),
])
def test_engine_options_refused_on_engines_without_them(args, fragment):
    r = run_cli("estimate", "-m", "smollm2-135m", "-w", "q8_0" if "llama.cpp" in args else "fp16",
                *args)
    assert fragment in assert_user_error(r)


def test_engine_options_change_the_prediction():
    """An engine option is the engine's own knob: llama.cpp's micro-batch bounds the prefill
    activations, vLLM without CUDA graphs holds no graph memory, eager attention holds scores."""
    def acts(*a):
        return ok_json("estimate", "-m", "smollm2-135m", "--json", "--prompt-tokens", "2048",
                       *a)["ranks"][0]

    assert acts("-e", "llama.cpp", "-w", "q8_0", "--ubatch", "128")["bytes"]["activations"] < \
        acts("-e", "llama.cpp", "-w", "q8_0")["bytes"]["activations"]
    assert "cuda_graphs" in acts("-e", "vllm")["detail"]["overhead"]
    assert "cuda_graphs" not in acts("-e", "vllm", "--cuda-graphs", "off")["detail"]["overhead"]
    assert acts("-e", "transformers", "--attention", "eager")["bytes"]["activations"] > \
        acts("-e", "transformers", "--attention", "sdpa")["bytes"]["activations"]
