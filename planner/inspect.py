"""``planner inspect PATH``: the exact tensors of a checkpoint (from its headers) or a config's
inventory, and whether the model spec derived from it reproduces the checkpoint's tensor list."""

from __future__ import annotations

import os
import re

from planner.errors import InputError
from planner.spec import ModelSpec, inventory

# Checkpoint entries that are buffers, not parameters (Llama-2's rotary inv_freq, GPT-2's masks).
_BUFFERS = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")

# GGUF tensor names (llama.cpp's llama architecture) -> canonical inventory names.
_GGUF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight":
             "model.norm.weight", "output.weight": "lm_head.weight"}
_GGUF_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def canonical_name(name: str, fmt: str) -> str | None:
    """The inventory name of a checkpoint tensor, where the naming is known (GGUF llama, HF llama)."""
    if fmt == "gguf":
        if name in _GGUF_TOP:
            return _GGUF_TOP[name]
        m = _GGUF_BLK.match(name)
        if m and m.group(2) in _GGUF_LAYER:
            return f"model.layers.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}"
        return None
    return name


def compare_inventory(spec: ModelSpec, ckpt) -> dict:
    """Compare the spec's inventory with a checkpoint's tensors: params always; names and shapes
    where the checkpoint uses Llama-style names (fused layouts of other families differ by name)."""
    inv = inventory(spec)
    inv_params = sum(t.numel for t in inv)
    buffers = [t for t in ckpt.tensors if _BUFFERS.search(t.name)]
    ck_params = ckpt.params - sum(t.numel for t in buffers)
    result = {"params": inv_params, "tensors": len(inv), "checkpoint_params": ck_params,
              "buffers_excluded": len(buffers)}
    llama_like = spec.family in ("llama", "mistral", "qwen2") and not spec.moe
    mismatches: list[str] = []
    if llama_like:
        by_name = {t.name: t.shape for t in inv}
        seen = set()
        for t in ckpt.tensors:
            if _BUFFERS.search(t.name):
                continue
            cname = canonical_name(t.name, ckpt.format)
            if cname not in by_name:
                mismatches.append(f"{t.name} is not in the inventory")
                continue
            seen.add(cname)
            if tuple(by_name[cname]) != tuple(t.shape):
                mismatches.append(f"{t.name}: checkpoint {list(t.shape)} vs inventory "
                                  f"{list(by_name[cname])}")
        for name in by_name:
            if name not in seen:
                mismatches.append(f"{name} is missing from the checkpoint")
    if ck_params != inv_params:
        mismatches.insert(0, f"parameters: checkpoint {ck_params:,} vs inventory {inv_params:,}")
    result["matches"] = not mismatches
    result["mismatches"] = mismatches[:20]
    if mismatches:
        result["note"] = "; ".join(mismatches[:3]) + (" …" if len(mismatches) > 3 else "")
    else:
        how = "every tensor name and shape" if llama_like else "parameter count"
        extra = f" ({len(buffers)} buffer(s) excluded)" if buffers else ""
        result["note"] = f"{how} equal, {inv_params:,} parameters{extra}"
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
    """Inventory name -> exact stored bytes, for ``--weights stored`` on a checkpoint whose tensor
    names map onto the inventory (GGUF and HF Llama-style checkpoints)."""
    ckpt = src.checkpoint
    if ckpt is None:
        raise InputError("--weights stored needs a checkpoint (safetensors or GGUF) as --model")
    cmp = compare_inventory(src.spec, ckpt)
    if not cmp["matches"] or src.spec.family not in ("llama", "mistral", "qwen2") or src.spec.moe:
        raise InputError(f"{src.path}: --weights stored needs a checkpoint whose tensors map one "
                         f"to one onto the model's inventory ({cmp['note']}); give a format instead")
    out = {}
    for t in ckpt.tensors:
        name = canonical_name(t.name, ckpt.format)
        if name is not None and not _BUFFERS.search(t.name):
            out[name] = t.nbytes
    return out
