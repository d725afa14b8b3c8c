"""The runtime model's parameters equal the planner's inventory (names, shapes, count) on meta."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.spec import inventory, param_count
from runtime.model import BUILT_FAMILIES, RuntimeError_, check_buildable, meta_inventory
from runtime_testutil import LLAMA, MIXTRAL, OPT

BUILT = [e.spec for e in catalog.entries() if e.spec.family in BUILT_FAMILIES]


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


def test_every_planner_family_is_built():
    from planner.spec import FAMILIES
    assert set(FAMILIES) <= set(BUILT_FAMILIES)


def test_unbuilt_family_refused_by_name():
    # every planner family is built now; a spec of any other family (a ModelSpec is not validated
    # on construction) still takes the refusal path
    from dataclasses import replace
    spec = replace(LLAMA, name="tiny-gemma", family="gemma")
    with pytest.raises(RuntimeError_, match="does not build the gemma family"):
        check_buildable(spec, 128)
