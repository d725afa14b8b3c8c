"""The built-in model catalog: YAML files beside this module, one per family, each entry citing its
source. Names are Hugging Face ids; short aliases (``glm-130b``, ``llama-2-7b``) resolve too."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from planner.errors import InputError, suggest
from planner.spec import ModelSpec

_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog model: its spec, aliases and source citation."""

    spec: ModelSpec
    aliases: tuple[str, ...]
    source: str
    note: str
    file: str


def _load_yaml(path: str):
    import yaml  # deferred: only catalog and plan loading need it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


@functools.lru_cache(maxsize=1)
def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog entry, in file order."""
    out: list[CatalogEntry] = []
    for fname in sorted(os.listdir(_DIR)):
        if not fname.endswith(".yaml"):
            continue
        data = _load_yaml(os.path.join(_DIR, fname))
        for i, item in enumerate(data.get("models", [])):
            where = f"catalog {fname} entry {i}"
            if "config" in item:
                # The model's published config.json, stored verbatim beside the catalog: the same
                # parser reads it as reads a user's file, and the oracle tests build it in
                # transformers.
                spec = _spec_from_stored_config(item, where)
            else:
                spec_data = dict(item["spec"])
                spec_data["name"] = item["name"]
                spec_data["source"] = item["source"]
                spec = ModelSpec.from_dict(spec_data, where)
            out.append(CatalogEntry(spec, tuple(item.get("aliases", [])), item["source"],
                                    item.get("note", ""), fname))
    return tuple(out)


CONFIG_DIR = os.path.join(_DIR, "configs")
"""Published config.json files of catalog models (``config: NAME.json`` in an entry)."""


def _spec_from_stored_config(item: dict, where: str) -> ModelSpec:
    import dataclasses
    import json

    from planner.sources import spec_from_config

    path = os.path.join(CONFIG_DIR, item["config"])
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    spec = spec_from_config(cfg, item["name"], f"{where} ({item['config']})")
    return dataclasses.replace(spec, source=item["source"])


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, CatalogEntry]:
    idx: dict[str, CatalogEntry] = {}
    for e in entries():
        for key in (e.spec.name, e.spec.name.split("/")[-1], *e.aliases):
            idx.setdefault(key.lower(), e)
    return idx


def names() -> list[str]:
    """Every name and alias the catalog answers to."""
    return sorted(_index())


def lookup(name: str) -> CatalogEntry:
    """The entry for a Hugging Face id or alias (case-insensitive), or InputError with suggestions."""
    entry = _index().get(name.strip().lower())
    if entry is None:
        raise InputError(f"unknown model {name!r}{suggest(name.strip(), names())} "
                         "(see `planner models`, or give a path to a config.json, "
                         "safetensors or GGUF file)")
    return entry
