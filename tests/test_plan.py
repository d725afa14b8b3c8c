"""Plan files: round trip, atomic writes, and every way a plan file can be bad."""

import os
import time

import pytest
import yaml

from planner.errors import InputError
from planner.memory import Workload, estimate
from planner.plan import (MAX_PLAN_BYTES, SCHEMA, dump_plan, load_plan, plan_document, plan_hash,
                          spec_hash, write_plan)
from planner.sources import resolve

GPUS = {"set": "2x3090", "gpus": [{"index": i, "name": "RTX 3090", "memory_bytes": 25769803776}
                                  for i in range(2)]}


@pytest.fixture(scope="module")
def doc() -> dict:
    src = resolve("llama-2-7b")
    est = estimate(src.spec, "int4-g128", "fp16", 2, 1, Workload(4, 1024, 256), "vllm")
    return plan_document(est, src, GPUS, capacity={"max_batch": 12})


@pytest.fixture
def plan_path(tmp_path, doc) -> str:
    path = str(tmp_path / "plan.yaml")
    write_plan(path, doc)
    return path


def _rewrite(path: str, edit) -> None:
    with open(path, encoding="utf-8") as fh:
        d = yaml.safe_load(fh)
    edit(d)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(dump_plan(d))


def _fails(path: str, *needles: str, verify: bool = True) -> str:
    with pytest.raises(InputError) as ei:
        load_plan(path, verify=verify)
    msg = str(ei.value)
    assert msg.startswith(path), msg
    for n in needles:
        assert n in msg, msg
    return msg


# -- round trip --------------------------------------------------------------------------------

def test_round_trip(plan_path, doc):
    p = load_plan(plan_path)
    assert p.doc == doc
    assert p.spec == resolve("llama-2-7b").spec
    assert (p.weights, p.kv_cache, p.tp, p.pp, p.engine, p.device) == \
        ("int4-g128", "fp16", 2, 1, "vllm", "cuda")
    assert p.workload == Workload(4, 1024, 256)
    assert p.quantize_lm_head is False
    assert p.source == {"kind": "catalog", "path": "meta-llama/Llama-2-7b-hf"}
    assert p.gpus["set"] == "2x3090" and len(p.gpus["gpus"]) == 2
    assert [r["gpu"] for r in p.ranks] == [0, 1]
    assert all(r["bytes"]["total"] == sum(r["bytes"][k] for k in
                                          ("weights", "kv_cache", "activations", "overhead"))
               for r in p.ranks)


def test_document_layout(doc):
    assert doc["schema"] == SCHEMA
    assert list(doc) == ["schema", "planner_version", "created", "model", "workload", "precision",
                         "engine", "layout", "prediction", "capacity", "hash"]
    assert doc["engine"] == {"name": "vllm", "gpu_memory_utilization": 0.9, "block_size": 16}
    assert doc["layout"]["ranks"][1] == {"rank": 1, "stage": 0, "tp_rank": 1, "gpu": 1,
                                         "layers": [0, 32]}
    assert doc["hash"] == plan_hash(doc)
    assert doc["model"]["spec_hash"] == spec_hash(resolve("llama-2-7b").spec)
    assert doc["created"].endswith("Z")


def test_pipeline_layout_and_lm_head_flag(tmp_path):
    src = resolve("llama-2-7b")
    est = estimate(src.spec, "int8", "fp16", 1, 2, Workload(1, 128, 0), "runtime",
                   quantize_lm_head=True)
    path = str(tmp_path / "pp.yaml")
    write_plan(path, plan_document(est, src, GPUS))
    p = load_plan(path)
    assert p.quantize_lm_head is True
    assert [r["layers"] for r in p.doc["layout"]["ranks"]] == [[0, 16], [16, 32]]


def test_too_few_gpus_refused():
    src = resolve("llama-2-7b")
    est = estimate(src.spec, "fp16", "fp16", 4, 1, Workload(1, 128, 0))
    with pytest.raises(InputError, match="needs 4 GPUs"):
        plan_document(est, src, GPUS)


# -- atomic write ------------------------------------------------------------------------------

def test_write_leaves_no_temp_files(tmp_path, doc):
    write_plan(str(tmp_path / "plan.yaml"), doc)
    assert os.listdir(tmp_path) == ["plan.yaml"]


def test_refuses_overwrite_without_force(plan_path, doc):
    before = open(plan_path).read()
    with pytest.raises(InputError, match="plan.yaml exists; pass --force to overwrite"):
        write_plan(plan_path, doc)
    assert open(plan_path).read() == before
    assert os.listdir(os.path.dirname(plan_path)) == ["plan.yaml"]


def test_force_overwrites(plan_path, doc):
    with open(plan_path, "w") as fh:
        fh.write("old")
    write_plan(plan_path, doc, force=True)
    assert load_plan(plan_path).doc == doc
    assert os.listdir(os.path.dirname(plan_path)) == ["plan.yaml"]


def test_failed_write_leaves_nothing(tmp_path):
    class Unserializable:
        pass

    with pytest.raises(Exception):
        write_plan(str(tmp_path / "plan.yaml"), {"x": Unserializable()})
    assert os.listdir(tmp_path) == []


def test_write_into_missing_folder(tmp_path, doc):
    with pytest.raises(InputError, match="does not exist"):
        write_plan(str(tmp_path / "nope" / "plan.yaml"), doc)


# -- bad files ---------------------------------------------------------------------------------

def test_truncated_file(plan_path):
    text = open(plan_path).read()
    with open(plan_path, "w") as fh:
        fh.write(text[: len(text) // 2])
    msg = _fails(plan_path)
    assert "malformed YAML at line" in msg or "missing field" in msg, msg


def test_truncated_mid_flow_mapping_names_the_line(tmp_path):
    path = str(tmp_path / "plan.yaml")
    with open(path, "w") as fh:
        fh.write(f"schema: {SCHEMA}\nworkload: {{batch: 4, prompt_tokens: 10")
    _fails(path, "malformed YAML at line", "flow mapping that starts at line 2")


def test_empty_file(tmp_path):
    path = str(tmp_path / "plan.yaml")
    open(path, "w").close()
    _fails(path, "empty file")


def test_not_a_mapping(tmp_path):
    path = str(tmp_path / "plan.yaml")
    with open(path, "w") as fh:
        fh.write("- 1\n- 2\n")
    _fails(path, "expected a mapping at the top level", "got a list")


def test_binary_junk(tmp_path):
    path = str(tmp_path / "plan.yaml")
    with open(path, "wb") as fh:
        fh.write(bytes(range(256)) * 8)
    _fails(path, "not UTF-8")


def test_unknown_top_level_key(plan_path):
    _rewrite(plan_path, lambda d: d.update(extra=1))
    _fails(plan_path, "unknown field extra")


def test_unknown_nested_key(plan_path):
    _rewrite(plan_path, lambda d: d["layout"].update(gpu_count=2))
    _fails(plan_path, "unknown field layout.gpu_count")


def test_unknown_deeply_nested_key(plan_path):
    _rewrite(plan_path, lambda d: d["prediction"]["ranks"][0]["bytes"].update(scratch=1))
    _fails(plan_path, "unknown field prediction.ranks[0].bytes.scratch")


def test_wrong_schema_version(plan_path):
    _rewrite(plan_path, lambda d: d.update(schema="planner.plan/v2"))
    msg = _fails(plan_path, "field schema")
    assert msg == (f"{plan_path}: field schema: 'planner.plan/v2' is not supported (this planner "
                   f"reads planner.plan/v1)")


def test_missing_schema(plan_path):
    _rewrite(plan_path, lambda d: d.pop("schema"))
    _fails(plan_path, "missing field schema")


def test_missing_field(plan_path):
    _rewrite(plan_path, lambda d: d["workload"].pop("prompt_tokens"))
    _fails(plan_path, "missing field workload.prompt_tokens")


def test_string_tp(plan_path):
    _rewrite(plan_path, lambda d: d["layout"].update(tp="2"))
    _fails(plan_path, "field layout.tp", "must be an integer")


def test_bool_batch(plan_path):
    _rewrite(plan_path, lambda d: d["workload"].update(batch=True))
    _fails(plan_path, "field workload.batch", "must be an integer")


def test_negative_batch(plan_path):
    _rewrite(plan_path, lambda d: d["workload"].update(batch=-4))
    _fails(plan_path, "field workload.batch", "must be positive")


def test_ranks_inconsistent_with_tp(plan_path):
    _rewrite(plan_path, lambda d: d["layout"].update(tp=1))
    _fails(plan_path, "field layout.ranks", "needs 1")


def test_unknown_weight_format(plan_path):
    _rewrite(plan_path, lambda d: d["precision"].update(weights="int3"))
    _fails(plan_path, "field precision.weights")


def test_tampered_prediction(plan_path):
    _rewrite(plan_path, lambda d: d["prediction"]["ranks"][0]["bytes"].update(total=1))
    _fails(plan_path, "field hash", "edited after it was written")


def test_verify_off_trusts_an_edited_prediction(plan_path):
    # launch --no-verify: measure a deliberately edited prediction (the runtime's FAIL path)
    _rewrite(plan_path, lambda d: d["prediction"]["ranks"][0]["bytes"].update(total=1))
    assert load_plan(plan_path, verify=False).ranks[0]["bytes"]["total"] == 1


def test_tampered_and_rehashed_prediction_refused(plan_path):
    """A plan edited with a recomputed hash is not trusted: the prediction is recomputed from the
    plan's own inputs, and the first differing figure is named."""
    def edit(d):
        d["prediction"]["ranks"][1]["bytes"]["kv_cache"] //= 4
        d["hash"] = plan_hash(d)
    _rewrite(plan_path, edit)
    _fails(plan_path, "field prediction.ranks[1].bytes.kv_cache", "recomputed")

    def edit_workload(d):  # inputs changed, prediction left stale
        d["workload"]["batch"] = 64
        d["hash"] = plan_hash(d)
    _rewrite(plan_path, edit_workload)
    _fails(plan_path, "field prediction.ranks[0].bytes.kv_cache", "re-plan it")


def test_hash_error_offers_no_flag(plan_path):
    _rewrite(plan_path, lambda d: d["workload"].update(batch=2))
    msg = _fails(plan_path, "field hash")
    assert "--no-verify" not in msg and "verification" not in msg


def test_tampered_spec(plan_path):
    _rewrite(plan_path, lambda d: d["model"]["spec"].update(vocab=32001))
    msg = _fails(plan_path, "field model.spec_hash")
    assert msg.endswith("does not match model.spec (the spec was edited)")


def test_tampered_spec_even_without_verify(plan_path):
    _rewrite(plan_path, lambda d: d["model"]["spec"].update(vocab=32001))
    _fails(plan_path, "field model.spec_hash", verify=False)


def test_duplicate_key(tmp_path):
    path = str(tmp_path / "plan.yaml")
    with open(path, "w") as fh:
        fh.write(f"schema: {SCHEMA}\nschema: {SCHEMA}\n")
    _fails(path, "duplicate key 'schema'")


def test_yaml_bomb_refused_quickly(tmp_path):
    lines = [f"schema: {SCHEMA}", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    path = str(tmp_path / "plan.yaml")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    t0 = time.monotonic()
    _fails(path, "anchors and aliases are not allowed")
    assert time.monotonic() - t0 < 2


def test_huge_file_refused(tmp_path):
    path = str(tmp_path / "plan.yaml")
    with open(path, "wb") as fh:
        fh.truncate(MAX_PLAN_BYTES + 1)  # sparse: no real disk use
    _fails(path, "too large for a plan file")


def test_deep_nesting_refused(tmp_path):
    path = str(tmp_path / "plan.yaml")
    with open(path, "w") as fh:
        fh.write("capacity: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError) as ei:
        load_plan(path)
    assert str(ei.value).startswith(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    _fails(path, "no such file")


def test_non_finite_capacity(plan_path):
    _rewrite(plan_path, lambda d: d.update(capacity={"max_batch": float("nan")}))
    _fails(plan_path, "field capacity.max_batch", "finite")


def test_non_finite_spec_value_refused_when_writing():
    import dataclasses

    src = resolve("llama-2-7b")
    est = estimate(src.spec, "fp16", "fp16", 1, 1, Workload(1, 128, 0), "runtime")
    est = dataclasses.replace(est, spec=dataclasses.replace(src.spec, rope_theta=float("nan")))
    with pytest.raises(InputError, match="cannot store"):
        plan_document(est, src, GPUS)
