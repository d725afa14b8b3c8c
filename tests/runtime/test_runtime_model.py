"""The runtime model's parameters equal the planner's inventory (names, shapes, count) on meta."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.spec import inventory, param_count
from runtime.model import RuntimeError_, check_buildable, meta_inventory, unbuilt_features
from runtime_testutil import LLAMA, MIXTRAL, OPT

BUILT = [e.spec for e in catalog.entries() if not unbuilt_features(e.spec)]


_FIRST = {}
for _s in BUILT:
    _FIRST.setdefault(_s.family, _s.name)
DEFAULT_RUN = set(_FIRST.values()) | {"deepseek-ai/DeepSeek-V3", "zai-org/GLM-4.5"}
"""The first catalog model of each family (and DeepSeek-V3, GLM-4.5) run by default; the other
catalog models are slow only (CI time; ``python -m pytest -m slow`` runs them)."""


@pytest.mark.parametrize("spec", [s if s.name in DEFAULT_RUN else
                                  pytest.param(s, marks=pytest.mark.slow) for s in BUILT]
                         + [LLAMA, OPT, MIXTRAL], ids=lambda s: s.name)
def test_inventory_equals_meta_model(spec):
    got = meta_inventory(spec)
    want = {t.name: tuple(t.shape) for t in inventory(spec)}
    assert got == want
    total = 0
    for shape in got.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    assert total == param_count(spec)


def test_catalog_covers_built_families():
    assert {s.family for s in BUILT} >= {"llama", "mistral", "qwen2", "phi3", "opt", "gpt2",
                                         "mixtral"}


def test_every_catalog_model_without_unbuilt_features_builds():
    # the runtime has no family list: a spec that uses only built features passes the check, at a
    # context past its sliding window / attention chunk too (ring-buffer KV cache)
    for s in BUILT:
        check_buildable(s, 16)
        check_buildable(s, 2 * max(s.sliding_window, s.attention_chunk, 16))


def test_unbuilt_feature_refused_by_name():
    """Only the vision tower is refused by feature name: it is neither allocated nor run."""
    from dataclasses import replace
    from planner.vision import VisionSpec
    spec = replace(LLAMA, name="tiny-vl", vision=VisionSpec(kind="siglip", layers=2, hidden=64))
    with pytest.raises(RuntimeError_, match=r"vision tower \(vision\)"):
        check_buildable(spec, 128)
