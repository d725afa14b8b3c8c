"""The planner against transformers' own model, for every real config.json stored in the repo.

Independent: the expected numbers come from what transformers 5.24 builds from the same file -- the
model on the meta device (AutoModelForCausalLM, or AutoModelForImageTextToText when the config has a
``vision_config``), its parameters and persistent buffers, the K/V widths its attention modules put
in the cache, the cache layers ``DynamicCache(config=...)`` creates, and, for one tiny model of
every model type, the cache a real CPU forward returns (tests/oracle_testutil.py; it never imports
the planner). Not independent: the config files themselves (the planner and transformers read the
same file, so a wrong copy fails neither), transformers' defaults for omitted fields (whatever
transformers does is taken as the truth), and the rule "a DynamicSlidingWindowLayer holds
min(context, window - 1) tokens" that the full-size KV check applies -- which the tiny forward
checks on the real engine. The count is parameters plus persistent buffers (the state dict, tied
weights once): DeepSeek-V3's and GLM-4.5's router ``e_score_correction_bias`` is a buffer in
transformers but a checkpoint tensor the planner must hold.

MLA (DeepSeek-V2/V3): transformers 5.24 caches the compressed latent, not per-head K and V -- one
"key" of kv_lora_rank (normed) and one "value" of qk_rope_head_dim per token per layer
(modeling_deepseek_v3.py, and the tiny forward's cache shapes). The planner predicts exactly that,
kv_lora_rank + qk_rope_head_dim elements, for the transformers engine.

A config whose model_type the planner refuses fails here; the ones known to fail today are the
strict xfails in PLANNER_GAPS (a fix turns them into failures until its entry is removed).
"""

from __future__ import annotations

import pytest

import oracle_testutil as oracle

import torch  # noqa: E402,F401 - the oracle is required in CI: a missing install fails, never skips
import transformers  # noqa: E402,F401

from planner.memory import Workload, estimate  # noqa: E402
from planner.sources import spec_from_config  # noqa: E402
from planner.spec import inventory, param_count  # noqa: E402

PLANNER_GAPS: dict[str, str] = {}
"""Config files the planner cannot plan yet, by test id, with why."""

TINY_GAPS: dict[str, str] = {}
"""Model types whose tiny model the planner cannot plan yet."""

FILES = oracle.config_files()


def _cases(gaps: dict) -> list:
    out = []
    for tid, path in FILES:
        marks = [pytest.mark.xfail(strict=True, reason=gaps[tid])] if tid in gaps else []
        out.append(pytest.param(path, id=tid, marks=marks))
    return out


def _multimodal_cases() -> list:
    return [c for c in _cases(PLANNER_GAPS) if oracle.is_multimodal(oracle.load(c.values[0]))]


def _tiny_cases(gaps: dict) -> list:
    """One config per model type transformers builds (the first file of each, sorted)."""
    seen: dict[str, object] = {}
    for tid, path in FILES:
        mt = oracle.for_transformers(oracle.load(path))["model_type"]
        seen.setdefault(mt, path)
    return [pytest.param(path, id=mt,
                         marks=[pytest.mark.xfail(strict=True, reason=gaps[mt])] if mt in gaps
                         else [])
            for mt, path in seen.items()]


def _spec(path, cfg: dict | None = None):
    return spec_from_config(oracle.load(path) if cfg is None else cfg, path.stem, str(path))


def test_every_folder_has_configs():
    folders = {tid.split("/")[0] for tid, _ in FILES}
    assert folders == set(oracle.CONFIG_DIRS), folders


# -- 1. parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", _cases(PLANNER_GAPS))
def test_param_count_equals_transformers(path):
    spec = _spec(path)
    got = oracle.built(path)
    planned = param_count(spec)
    assert planned == got.total, (
        f"{path.name}: planner {planned:,} vs transformers {got.total:,} "
        f"({got.params:,} parameters + {got.buffers:,} persistent buffers); differing groups:\n"
        + oracle.diff({t.name: t.numel for t in inventory(spec)}, got.numel))


@pytest.mark.parametrize("path", _multimodal_cases())
def test_text_model_param_count_equals_transformers(path):
    """The text model alone (vision tower and projector left out on both sides)."""
    spec = _spec(path)
    got = oracle.built(path)
    planned = sum(t.numel for t in inventory(spec) if t.role != "vision")
    assert planned == got.text, (
        f"{path.name}: text model: planner {planned:,} vs transformers {got.text:,}\n"
        + oracle.diff({t.name: t.numel for t in inventory(spec) if t.role != "vision"},
                      {n: k for n, k in got.numel.items()
                       if not any(v in n for v in oracle.VISION_PARTS)}))


# -- 2. KV cache of the full-size model -----------------------------------------------------------

def _context(layers) -> int:
    """A context longer than twice every window (and at least 4096)."""
    return max([4096] + [2 * lay.window for lay in layers]) + 1


def _planner_kv(spec, context: int) -> dict:
    est = estimate(spec, weights="fp16", kv_cache="fp16", engine="transformers",
                   workload=Workload(1, context, 0))
    rank = est.ranks[0]
    assert len(est.ranks) == 1
    return {**rank.detail["kv_cache"], "bytes": rank.kv_cache}


def _by_kind(layers, context: int) -> dict:
    out: dict[str, dict[str, int]] = {}
    for lay in layers:
        k = out.setdefault(lay.kind, {"layers": 0, "tokens_per_sequence": lay.tokens_held(context)})
        k["layers"] += 1
        assert k["tokens_per_sequence"] == lay.tokens_held(context)
    return out


@pytest.mark.parametrize("path", _cases(PLANNER_GAPS))
def test_kv_cache_per_layer_kind_equals_transformers(path):
    spec = _spec(path)
    layers = oracle.built(path).layers
    c = _context(layers)
    kv = _planner_kv(spec, c)

    assert [spec.layer_kind(i) for i in range(spec.layers)] == [lay.kind for lay in layers]
    assert [spec.window_of(i) for i in range(spec.layers)] == [lay.window for lay in layers]
    widths = {2 * (lay.k + lay.v) for lay in layers}  # fp16 bytes per token per layer, K + V
    assert widths == {kv["bytes_per_token_per_layer"]}, (
        f"{path.name}: planner {kv['bytes_per_token_per_layer']} B/token/layer, transformers "
        f"{sorted(widths)} (K {layers[0].k} + V {layers[0].v} elements)")
    planned = {k: {"layers": v["layers"], "tokens_per_sequence": v["tokens_per_sequence"]}
               for k, v in kv["by_kind"].items()}
    assert planned == _by_kind(layers, c), f"context {c}"
    assert kv["bytes"] == sum(2 * (lay.k + lay.v) * lay.tokens_held(c) for lay in layers)


@pytest.mark.parametrize("path", [c for c in _cases(PLANNER_GAPS)
                                  if oracle.load(c.values[0]).get("kv_lora_rank")])
def test_mla_cache_is_the_latent(path):
    """transformers caches kv_lora_rank + qk_rope_head_dim per token per layer (not per-head K/V);
    the planner's transformers engine plans the same latent."""
    cfg = oracle.load(path)
    got = oracle.built(path)
    assert got.mla == {"num_heads": cfg["num_attention_heads"], "kv_lora_rank": cfg["kv_lora_rank"],
                       "qk_rope_head_dim": cfg["qk_rope_head_dim"]}
    latent = (cfg["kv_lora_rank"], cfg["qk_rope_head_dim"])
    assert {(lay.k, lay.v) for lay in got.layers} == {latent}
    spec = _spec(path)
    assert _planner_kv(spec, 4096)["bytes_per_token_per_layer"] == 2 * (
        spec.kv_lora_rank + spec.qk_rope_dim)


# -- 3. a real forward of a tiny model of every type -----------------------------------------------

VARIANTS = {
    "mistral-all-sliding": ("tests", "mistralai--Mistral-7B-Instruct-v0.3.json",
                            {"sliding_window": 4096}),
    "qwen2-sliding-above-max-window-layers": ("catalog", "Qwen--Qwen2.5-7B.json",
                                              {"use_sliding_window": True, "max_window_layers": 2}),
}
"""Published configs with one feature switched on that other checkpoints of the family use
(Mistral-7B-v0.1 slides on every layer with a 4096 window; Qwen2 slides on the layers from
max_window_layers on when use_sliding_window is set): the tiny forward then shows the real cache."""


def _variant(key: str) -> dict:
    short, name, change = VARIANTS[key]
    return {**oracle.load(oracle.CONFIG_DIRS[short] / name), **change}


@pytest.fixture(scope="module")
def tiny_runs():
    cache: dict = {}

    def run(key, cfg=None):
        if key not in cache:
            cache[key] = oracle.tiny_forward(oracle.load(key) if cfg is None else cfg)
        return cache[key]

    return run


def _check_real_cache(got, layers):
    n = oracle.TINY_TOKENS
    assert len(got) == len(layers)
    for i, (real, lay) in enumerate(zip(got, layers)):
        assert (real.k, real.v) == (lay.k, lay.v), f"layer {i}"
        want = n if lay.kind == "full" else oracle.TINY_WINDOW - 1
        assert real.tokens == want == lay.tokens_held(n), f"layer {i} ({lay.kind})"


def _check_planner(cfg, got, layers):
    spec = spec_from_config(oracle.tiny_config(cfg), "tiny", "tiny config")
    kv = _planner_kv(spec, oracle.TINY_TOKENS)
    assert spec.layers == len(got)
    assert [spec.layer_kind(i) for i in range(spec.layers)] == [lay.kind for lay in layers]
    per_layer = [kv["by_kind"][spec.layer_kind(i)]["tokens_per_sequence"]
                 for i in range(spec.layers)]
    assert per_layer == [real.tokens for real in got]
    assert {2 * (real.k + real.v) for real in got} == {kv["bytes_per_token_per_layer"]}
    assert kv["bytes"] == sum(2 * (real.k + real.v) * real.tokens for real in got)


@pytest.mark.parametrize("path", _tiny_cases({}))
def test_tiny_forward_cache_holds_window_minus_one(path, tiny_runs):
    """transformers only: the cache a real forward returns holds every token on full layers and
    window - 1 on sliding and chunked ones, and is as wide as the modules' weights say."""
    _check_real_cache(*tiny_runs(path))


@pytest.mark.parametrize("path", _tiny_cases(TINY_GAPS))
def test_tiny_forward_cache_equals_planner(path, tiny_runs):
    """The planner's transformers engine, on the same tiny config, against the real cache."""
    _check_planner(oracle.load(path), *tiny_runs(path))


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_tiny_variant_cache_equals_planner(key, tiny_runs):
    cfg = _variant(key)
    got, layers = tiny_runs(key, cfg)
    _check_real_cache(got, layers)
    assert {lay.kind for lay in layers} >= {"sliding"}
    _check_planner(cfg, got, layers)
