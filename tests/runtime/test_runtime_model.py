"""The runtime model's parameters equal the planner's inventory (names, shapes, count) on meta."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.spec import inventory, param_count
from runtime.model import RuntimeError_, check_buildable, meta_inventory, unbuilt_features
from runtime_testutil import LLAMA, MIXTRAL, OPT

BUILT = [e.spec for e in catalog.entries() if not unbuilt_features(e.spec)]


@pytest.mark.parametrize("spec", BUILT + [LLAMA, OPT, MIXTRAL], ids=lambda s: s.name)
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
    # the runtime has no family list: a spec that uses only built features passes the check
    for s in BUILT:
        if not s.sliding_window:
            check_buildable(s, 16)


def test_unbuilt_feature_refused_by_name():
    from dataclasses import replace
    spec = replace(LLAMA, name="tiny-capped", final_softcap=30.0)
    with pytest.raises(RuntimeError_, match="final-logit softcapping"):
        check_buildable(spec, 128)
