"""``planner inspect PATH``: the exact tensors of a checkpoint (from its headers) or a config's
inventory, and whether the model spec derived from it reproduces the checkpoint's tensor list."""

from __future__ import annotations

import os

from planner import names
from planner.errors import InputError
from planner.spec import ModelSpec, inventory

def compare_inventory(spec: ModelSpec, ckpt) -> dict:
    """Compare the spec's inventory with a checkpoint's tensors, name by name through
    planner/names.py: every checkpoint tensor must map onto inventory tensors (a fused or stacked
    one onto several, its elements summing exactly to theirs), every inventory tensor must be
    covered exactly once, with its shape. Buffers, multi-token-prediction layers and
    quantization scales are excluded and counted."""
    fmt = ckpt.format
    inv = inventory(spec)
    by_name = {t.name: t for t in inv}
    inv_params = sum(t.numel for t in inv)
    covered: dict[str, int] = {}
    excluded = {"buffer": 0, "mtp": 0, "scales": 0}
    mismatches: list[str] = []
    ck_params = 0
    for t in ckpt.tensors:
        why = names.ignored(spec, t.name, fmt)
        if why:
            excluded[why] += 1
            continue
        ps = names.pieces(spec, t.name, fmt)
        values = [p for p in ps if not p.scales]
        if ps and not values:
            excluded["scales"] += 1
            continue
        if not ps:
            ck_params += t.numel
            mismatches.append(f"{t.name}: not a {spec.family} tensor name this planner knows")
            continue
        shape = tuple(t.shape)
        try:
            used = sum(names.consumed(shape, p) for p in values)
            supplied = [(p, names.ops_shape(shape, p.ops)) for p in values]
        except ValueError as e:
            ck_params += t.numel
            mismatches.append(f"{t.name} {list(shape)}: {e}")
            continue
        if used != t.numel:
            mismatches.append(f"{t.name}: holds {t.numel:,} elements but its inventory parts "
                              f"take {used:,}")
        for p, out in supplied:
            n = 1
            for d in out:
                n *= d
            ck_params += n
            inv_t = by_name.get(p.target)
            if inv_t is None:
                mismatches.append(f"{t.name} holds {p.target}, which is not in the inventory")
                continue
            if not p.into and tuple(out) != tuple(inv_t.shape):
                mismatches.append(f"{t.name}: checkpoint {list(out)} vs inventory "
                                  f"{list(inv_t.shape)} ({p.target})" if p.target != t.name
                                  else f"{t.name}: checkpoint {list(out)} vs inventory "
                                  f"{list(inv_t.shape)}")
            covered[p.target] = covered.get(p.target, 0) + n
    for t in inv:
        got = covered.get(t.name, 0)
        if got == 0:
            mismatches.append(f"{t.name} is missing from the checkpoint")
        elif got != t.numel:
            mismatches.append(f"{t.name}: the checkpoint covers {got:,} of its {t.numel:,} "
                              "elements")
    if ck_params != inv_params:
        mismatches.insert(0, f"parameters: checkpoint {ck_params:,} vs inventory {inv_params:,}")
    result = {"params": inv_params, "tensors": len(inv), "checkpoint_params": ck_params,
              "buffers_excluded": excluded["buffer"], "mtp_excluded": excluded["mtp"],
              "scales_excluded": excluded["scales"], "matches": not mismatches,
              "mismatches": mismatches[:20]}
    if mismatches:
        result["note"] = "; ".join(mismatches[:3]) + (" …" if len(mismatches) > 3 else "")
    else:
        extra = ", ".join(f"{n} {what} tensor(s)" for what, n in
                          (("buffer", excluded["buffer"]), ("multi-token-prediction",
                                                            excluded["mtp"]),
                           ("scale", excluded["scales"])) if n)
        result["note"] = (f"every tensor name and shape equal, {inv_params:,} parameters"
                          + (f" ({extra} excluded)" if extra else ""))
    return result


def inspect_path(path: str) -> dict:
    """The report ``planner inspect`` prints: exact counts from headers, and the derived spec."""
    from planner import sources

    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    if os.path.isfile(path) and path.lower().endswith(".json") \
            and not path.lower().endswith(".index.json"):
        src = sources.resolve(path)
        return _config_report(path, src.spec)
    if os.path.isdir(path) and not any(n.endswith((".safetensors", ".gguf", ".index.json"))
                                       for n in os.listdir(path)):
        src = sources.resolve(path)
        return _config_report(path, src.spec)

    from planner.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    dtypes: dict[str, dict[str, int]] = {}
    for t in ckpt.tensors:
        d = dtypes.setdefault(t.dtype, {"tensors": 0, "params": 0, "bytes": 0})
        d["tensors"] += 1
        d["params"] += t.numel
        d["bytes"] += t.nbytes
    report = {"path": path, "format": ckpt.format, "tensors": len(ckpt.tensors),
              "params": ckpt.params, "bytes": ckpt.bytes, "dtypes": dtypes, "model": None,
              "inventory": None}
    try:
        src = sources.resolve(path)
    except InputError as e:
        report["model_error"] = str(e)
        return report
    report["model"] = src.spec.to_dict()
    report["inventory"] = compare_inventory(src.spec, ckpt)
    return report


def _config_report(path: str, spec: ModelSpec) -> dict:
    inv = inventory(spec)
    params = sum(t.numel for t in inv)
    width = {"fp32": 4, "fp8": 1}.get(spec.dtype, 2)
    return {"path": path, "format": "config", "tensors": len(inv), "params": params,
            "bytes": params * width, "dtypes": {spec.dtype: {"tensors": len(inv), "params": params,
                                                               "bytes": params * width}},
            "model": spec.to_dict(),
            "inventory": {"params": params, "tensors": len(inv), "matches": True,
                          "note": "from config.json (no checkpoint headers to compare)"}}


def stored_bytes(src) -> dict[str, int]:
    """Inventory name -> exact stored bytes, for ``--weights stored`` on a checkpoint whose tensors
    map onto the inventory (planner/names.py): a fused or stacked tensor's bytes are shared out
    by elements (rows and experts of one tensor have one width), its scales go with it."""
    ckpt = src.checkpoint
    if ckpt is None:
        raise InputError("--weights stored needs a checkpoint (safetensors or GGUF) as --model")
    cmp = compare_inventory(src.spec, ckpt)
    if not cmp["matches"]:
        raise InputError(f"{src.path}: --weights stored needs a checkpoint whose tensors map "
                         f"onto the model's inventory ({cmp['note']}); give a format instead")
    out: dict[str, int] = {}
    for t in ckpt.tensors:
        if names.ignored(src.spec, t.name, ckpt.format):
            continue
        ps = names.pieces(src.spec, t.name, ckpt.format)
        shape = tuple(t.shape)
        share = [(p, names.consumed(shape, p)) for p in ps]
        total = sum(n for _, n in share)
        for p, n in share:
            if (t.nbytes * n) % total:
                raise InputError(f"{src.path}: tensor {t.name}'s {t.nbytes} bytes do not divide "
                                 f"evenly among the inventory tensors it holds; give a format")
            out[p.target] = out.get(p.target, 0) + t.nbytes * n // total
    return out
