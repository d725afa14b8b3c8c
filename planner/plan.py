"""Plan files (DESIGN §8): everything a launch needs, written atomically, validated on load.

A plan is one YAML document with ``schema: planner.plan/v1``::

    schema, planner_version, created            # which planner wrote it, when (UTC ISO 8601)
    model:      name, source {kind, path}, spec {every ModelSpec field}, spec_hash
    workload:   batch, prompt_tokens, new_tokens
    precision:  weights, kv_cache, quantize_lm_head
    engine:     name [, gpu_memory_utilization] [, block_size]
    layout:     device, gpu_set, gpus [{index, name, memory_bytes}], tp, pp,
                ranks [{rank, stage, tp_rank, gpu, layers: [first, end)}]
    prediction: ranks [{rank, bytes {weights, kv_cache, activations, overhead, total}, detail}],
                kv_cache_bytes_per_token, params, warnings
    capacity, performance                       # optional free-form mappings (numbers, strings)
    hash                                        # plan_hash of everything above

Bytes are integers. ``spec_hash`` pins the spec, ``hash`` pins the whole document: a plan edited by
hand after it was written is refused, and so is one whose prediction differs from the one this planner
computes from the plan's own inputs (even with a recomputed hash), unless it is loaded with
``verify=False``. Loading never trusts
the file: size cap, safe YAML loader without aliases (no "billion laughs"), no duplicate or unknown
keys, every field type-checked, and every error an InputError that names the file and the field.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any

from planner import __version__
from planner.errors import InputError, PlannerError
from planner.memory import Estimate, LINE_ITEMS, Workload, check_layout, stage_layers
from planner.sources import ModelSource
from planner.spec import ModelSpec

SCHEMA = "planner.plan/v1"

MAX_PLAN_BYTES = 16 << 20
"""Largest plan file read (a 1024-rank plan is well under 2 MiB)."""

SOURCE_KINDS = ("catalog", "config", "safetensors", "safetensors-sharded", "gguf")
ENGINE_OPTIONS = ("gpu_memory_utilization", "block_size")
_MAX_FREEFORM_DEPTH = 16
_SPEC_FIELDS = tuple(f.name for f in fields(ModelSpec))


@dataclass(frozen=True)
class Plan:
    """A loaded and validated plan file."""

    doc: dict
    """The whole document as read."""
    spec: ModelSpec
    weights: str
    """Weight format key (precision registry)."""
    kv_cache: str
    """KV-cache format key."""
    tp: int
    pp: int
    workload: Workload
    engine: str
    """Engine profile name."""
    device: str
    """cuda or cpu."""
    quantize_lm_head: bool
    ranks: list[dict]
    """Per rank: {"rank", "gpu" (index or None on cpu), "bytes" {line items}, "detail"}."""
    source: dict
    """{"kind", "path"} of the model."""
    gpus: dict
    """{"set": gpu_set, "gpus": [{"index", "name", "memory_bytes"}]}."""


# -- hashes ------------------------------------------------------------------------------------

def _canonical(obj: Any) -> bytes:
    """Sorted-key JSON; NaN or Infinity anywhere is a ValueError (a plan stores finite numbers)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def spec_hash(spec: ModelSpec) -> str:
    """sha256 of the canonical JSON (sorted keys) of ``spec.to_dict()``."""
    return hashlib.sha256(_canonical(spec.to_dict())).hexdigest()


def plan_hash(doc: dict) -> str:
    """sha256 of the canonical JSON of the whole document without its ``hash`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in doc.items() if k != "hash"})).hexdigest()


# -- building ----------------------------------------------------------------------------------

def plan_document(est: Estimate, source: ModelSource, gpus: dict, capacity: dict | None = None,
                  performance: dict | None = None, engine_options: dict | None = None) -> dict:
    """The plan document for an estimate.

    ``gpus`` is ``{"set": "4x3090", "gpus": [{"index", "name", "memory_bytes"}, ...]}``; rank r runs
    on ``gpus[r]`` (stage-major ranks, as planner.memory numbers them). On ``device: cpu`` the list
    may be empty and ranks carry ``gpu: null``. ``engine_options`` may set ``gpu_memory_utilization``
    and ``block_size``; where the estimate's engine profile has them (vLLM: 0.9, 16) they are filled
    in, and a block size that differs from the one the prediction used is refused.
    """
    where = "plan"
    try:
        spec_hash(est.spec)
    except ValueError as e:  # NaN/Infinity in the spec: one line, not a crash while writing
        raise InputError(f"{where}: the model spec holds a value a plan cannot store ({e})") from None
    if not isinstance(gpus, dict) or set(gpus) - {"set", "gpus"}:
        raise InputError(f"{where}: gpus must be a mapping with 'set' and 'gpus'")
    gpu_list = [dict(g) for g in gpus.get("gpus") or []]
    n_ranks = est.tp * est.pp
    if est.device == "cuda" and len(gpu_list) < n_ranks:
        raise InputError(f"{where}: TP {est.tp} x PP {est.pp} needs {n_ranks} GPUs; the GPU set "
                         f"{gpus.get('set')!r} has {len(gpu_list)}")
    gpu_list = gpu_list[:n_ranks] if est.device == "cuda" else gpu_list

    eng = est.engine
    opts: dict[str, Any] = {}
    if eng.gpu_memory_utilization:
        opts["gpu_memory_utilization"] = eng.gpu_memory_utilization
    if eng.kv_block_tokens:
        opts["block_size"] = eng.kv_block_tokens
    for key, value in (engine_options or {}).items():
        if key not in ENGINE_OPTIONS:
            raise InputError(f"{where}: unknown engine option {key!r}; known: "
                             f"{', '.join(ENGINE_OPTIONS)}")
        if key == "block_size" and value != eng.kv_block_tokens:
            raise InputError(f"{where}: engine option block_size {value!r} differs from the "
                             f"{eng.kv_block_tokens or 'unpaged'} KV blocks the prediction used "
                             f"(engine {eng.name})")
        opts[key] = value

    layout_ranks = []
    pred_ranks = []
    for r in est.ranks:
        gpu = gpu_list[r.rank]["index"] if est.device == "cuda" else None
        layout_ranks.append({"rank": r.rank, "stage": r.stage, "tp_rank": r.tp_rank, "gpu": gpu,
                             "layers": [r.layers[0], r.layers[1]]})
        pred_ranks.append({"rank": r.rank, "bytes": r.bytes(),
                           "detail": {k: dict(v) for k, v in r.detail.items()}})
    w = est.workload
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "planner_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        .isoformat().replace("+00:00", "Z"),
        "model": {"name": est.spec.name,
                  "source": {"kind": source.kind, "path": source.path},
                  "spec": est.spec.to_dict(),
                  "spec_hash": spec_hash(est.spec)},
        "workload": {"batch": w.batch, "prompt_tokens": w.prompt_tokens,
                     "new_tokens": w.new_tokens},
        "precision": {"weights": est.weights.key, "kv_cache": est.kv.key,
                      "quantize_lm_head": bool(_quantize_lm_head(est))},
        "engine": {"name": eng.name, **opts},
        "layout": {"device": est.device, "gpu_set": str(gpus.get("set", "")),
                   "gpus": gpu_list, "tp": est.tp, "pp": est.pp, "ranks": layout_ranks},
        "prediction": {"ranks": pred_ranks, "kv_cache_bytes_per_token": est.kv_bytes_per_token,
                       "params": est.params, "warnings": list(est.warnings)},
    }
    if capacity is not None:
        doc["capacity"] = capacity
    if performance is not None:
        doc["performance"] = performance
    try:
        doc["hash"] = plan_hash(doc)
    except (ValueError, TypeError) as e:  # NaN/Infinity in a spec or option: one line, not a crash
        raise InputError(f"{where}: holds a value a plan cannot store ({e})") from None
    validate(doc, where)  # what we write, we can read back
    return doc


def _quantize_lm_head(est: Estimate) -> bool:
    """Whether the estimate stored the LM head in the weight format.

    Estimate does not carry the flag; an LM head counted at more or fewer bytes than its unquantized
    shard (padded vocab / TP x hidden x 2 or 4 bytes) was quantized.
    """
    flag = getattr(est, "quantize_lm_head", None)
    if isinstance(flag, bool):
        return flag
    if not est.weights.quantized:
        return False
    from planner.memory import padded_vocab

    base = 4 if est.weights.key == "fp32" else 2
    shard = padded_vocab(est.spec, est.tp, est.engine) // est.tp * est.spec.hidden * base
    held = est.ranks[-1].detail.get("weights", {}).get("lm_head")
    return held is not None and held != shard


# -- writing -----------------------------------------------------------------------------------

def dump_plan(doc: dict) -> str:
    """The YAML text of a plan document (keys in document order)."""
    import yaml  # deferred: `import planner` stays light

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, allow_unicode=True,
                          width=100)


def candidate_document(candidate, source: ModelSource, gpuset) -> dict:
    """The plan document for a search candidate (planner.search.Candidate) on a GPU set: what
    ``planner recommend -o`` and the TUI's save both write. Rank r runs on the candidate's r-th
    device; its capacity and roofline go in as ``capacity`` and ``performance``."""
    c = candidate
    gpus = {"set": gpuset.text,
            "gpus": [{"index": d.index, "name": d.profile.name, "memory_bytes": d.memory_bytes}
                     for d in c.devices]}
    return plan_document(
        c.estimate, source, gpus,
        capacity={"max_batch": c.max_batch, "max_context": c.max_context,
                  "kv_cache_tokens": c.kv_cache_tokens, "kv_blocks": c.kv_blocks},
        performance=c.roofline.to_json() if c.roofline else None)


def write_plan(path: str, doc: dict, force: bool = False) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over ``path``.

    Refuses to replace an existing file unless ``force``, and anything but a regular file even with
    it (a FIFO, a device node, a symlink: planner.paths); never leaves the temp file behind.
    """
    from planner.paths import atomic_write

    if not isinstance(doc, dict):
        raise InputError(f"{path}: a plan document must be a mapping")
    try:
        text = dump_plan(doc)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: the plan holds a value YAML cannot write ({e})") from None
    atomic_write(path, text, force)


# -- reading -----------------------------------------------------------------------------------

class _AliasUsed(Exception):
    def __init__(self, mark):
        super().__init__("alias")
        self.mark = mark


class _DuplicateKey(Exception):
    def __init__(self, key, mark):
        super().__init__("duplicate")
        self.key, self.mark = key, mark


def _loader_class():
    import yaml  # deferred: `import planner` stays light

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class PlanLoader(base):  # type: ignore[misc, valid-type]
        """Safe loader that refuses aliases (each node is constructed once) and duplicate keys."""

        def construct_object(self, node, deep=False):
            if node in self.constructed_objects or node in self.recursive_objects:
                raise _AliasUsed(node.start_mark)
            return super().construct_object(node, deep)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = getattr(key_node, "value", None)
                if isinstance(key, str):
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return PlanLoader


class _TooDeep(Exception):
    pass


MAX_DEPTH = 64
"""Deepest nesting of YAML collections read (a plan needs 5). libyaml's composer recurses once per
level and overflows the C stack on deep hostile input, so depth is checked on the event stream,
which the parser produces without recursion, before anything is composed."""


def _scan_events(text: str, loader) -> None:
    """Refuse aliases and excessive nesting from the event stream, before composing nodes."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.AliasEvent):
            raise _AliasUsed(event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _TooDeep()
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _line(mark) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "unknown line"


def _parse(path: str) -> Any:
    from planner.paths import read_bytes

    raw = read_bytes(path, MAX_PLAN_BYTES, "plan file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); not a plan file") from None
    if not text.strip():
        raise InputError(f"{path}: empty file; not a plan (write one with planner recommend/plan)")
    import yaml  # deferred: `import planner` stays light

    loader = _loader_class()
    try:
        _scan_events(text, loader)
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except _AliasUsed as e:
        raise InputError(f"{path}: YAML anchors and aliases are not allowed in a plan file "
                         f"({_line(e.mark)})") from None
    except _DuplicateKey as e:
        raise InputError(f"{path}: duplicate key {e.key!r} at {_line(e.mark)}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "malformed YAML"
        if e.context and e.context_mark is not None and e.problem_mark is not None:
            what += f" ({e.context} that starts at {_line(e.context_mark)})"
        raise InputError(f"{path}: malformed YAML at {_line(mark)}: {what}; truncated or edited "
                         "file?") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: malformed YAML ({e})") from None
    except (RecursionError, _TooDeep):
        raise InputError(f"{path}: YAML nested too deeply for a plan file (more than "
                         f"{MAX_DEPTH} levels)") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a 5000-digit integer
        raise InputError(f"{path}: unreadable YAML value ({e})") from None


def load_plan(path: str, verify: bool = True) -> Plan:
    """Read and validate a plan file. ``verify=False`` trusts the file as written: it skips the
    whole-document hash check and the recomputation of the prediction (``launch --no-verify``, for
    measuring an edited prediction); every field is still type-checked."""
    doc = _parse(path)
    return validate(doc, path, verify)


# -- validation --------------------------------------------------------------------------------

class _Check:
    """Field checks whose errors read '<file>: field <path>: <what>'."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, msg: str) -> InputError:
        return InputError(f"{self.where}: field {field}: {msg}")

    def mapping(self, obj: Any, field: str, required: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(field or "(top level)", f"expected a mapping, got {_kind(obj)}")
        prefix = f"{field}." if field else ""
        for k in obj:
            if not isinstance(k, str):
                raise InputError(f"{self.where}: field {field or '(top level)'}: key {k!r} is not "
                                 "a string")
        unknown = [k for k in obj if k not in required and k not in optional]
        if unknown:
            raise InputError(f"{self.where}: unknown field {prefix}{sorted(unknown)[0]}"
                             + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        for k in required:
            if k not in obj:
                raise InputError(f"{self.where}: missing field {prefix}{k}")
        return obj

    def int(self, value: Any, field: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer, got {_kind(value)} {value!r}"[:200])
        if value < minimum:
            what = "positive" if minimum == 1 else f"at least {minimum}"
            raise self.fail(field, f"must be {what}, got {value}")
        if value > 1 << 62:
            raise self.fail(field, f"{value} is implausibly large")
        return value

    def str(self, value: Any, field: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.fail(field, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def bool(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {value!r}"[:200])
        return value

    def list(self, value: Any, field: str) -> list:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list, got {_kind(value)}")
        return value

    def freeform(self, value: Any, field: str, depth: int = 0) -> None:
        """JSON-like data: mappings with string keys, lists, strings, finite numbers, booleans."""
        if depth > _MAX_FREEFORM_DEPTH:
            raise self.fail(field, "nested too deeply")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise self.fail(field, f"key {k!r} is not a string")
                self.freeform(v, f"{field}.{k}", depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.freeform(v, f"{field}[{i}]", depth + 1)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(field, f"{value!r} is not a finite number")
        elif value is not None and not isinstance(value, (str, int, bool)):
            raise self.fail(field, f"{_kind(value)} is not allowed here (numbers, strings, "
                                   "booleans, lists and mappings only)")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def validate(doc: Any, where: str = "plan", verify: bool = True) -> Plan:
    """Check a plan document field by field and build the Plan. Errors name ``where`` and the field."""
    from planner.engines import engine as get_engine
    from planner.precision import kv_format, weight_format

    c = _Check(where)
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected a mapping at the top level (a plan file), got "
                         f"{_kind(doc)}")
    if "schema" not in doc:
        raise InputError(f"{where}: missing field schema (is this a plan file? expected "
                         f"schema: {SCHEMA})")
    if doc["schema"] != SCHEMA:
        raise c.fail("schema", f"{doc['schema']!r} is not supported (this planner reads {SCHEMA})")
    c.mapping(doc, "", ("schema", "planner_version", "created", "model", "workload", "precision",
                        "engine", "layout", "prediction", "hash"), ("capacity", "performance"))
    c.str(doc["planner_version"], "planner_version")
    c.str(doc["created"], "created")
    c.str(doc["hash"], "hash")

    # model
    m = c.mapping(doc["model"], "model", ("name", "source", "spec", "spec_hash"))
    name = c.str(m["name"], "model.name")
    src = c.mapping(m["source"], "model.source", ("kind", "path"))
    c.str(src["kind"], "model.source.kind", SOURCE_KINDS)
    c.str(src["path"], "model.source.path")
    sd = c.mapping(m["spec"], "model.spec", _SPEC_FIELDS)
    try:
        spec = ModelSpec.from_dict(dict(sd), f"{where}: field model.spec")
    except PlannerError as e:
        raise InputError(str(e)) from None
    if spec.name != name:
        raise c.fail("model.name", f"{name!r} does not match model.spec.name {spec.name!r}")
    c.str(m["spec_hash"], "model.spec_hash")
    try:
        actual_spec_hash = spec_hash(spec)
    except ValueError:
        raise c.fail("model.spec", "holds a non-finite number") from None
    if m["spec_hash"] != actual_spec_hash:
        raise c.fail("model.spec_hash", "does not match model.spec (the spec was edited)")

    # workload
    wd = c.mapping(doc["workload"], "workload", ("batch", "prompt_tokens", "new_tokens"))
    wl = Workload(c.int(wd["batch"], "workload.batch", 1),
                  c.int(wd["prompt_tokens"], "workload.prompt_tokens", 1),
                  c.int(wd["new_tokens"], "workload.new_tokens", 0))
    try:
        wl.validate()
    except PlannerError as e:
        raise c.fail("workload", str(e)) from None

    # precision
    pd = c.mapping(doc["precision"], "precision", ("weights", "kv_cache", "quantize_lm_head"))
    try:
        fmt = weight_format(c.str(pd["weights"], "precision.weights"))
    except PlannerError as e:
        raise c.fail("precision.weights", str(e)) from None
    try:
        kvf = kv_format(c.str(pd["kv_cache"], "precision.kv_cache"))
    except PlannerError as e:
        raise c.fail("precision.kv_cache", str(e)) from None
    qlm = c.bool(pd["quantize_lm_head"], "precision.quantize_lm_head")

    # engine
    ed = c.mapping(doc["engine"], "engine", ("name",), ENGINE_OPTIONS)
    try:
        eng = get_engine(c.str(ed["name"], "engine.name"))
    except PlannerError as e:
        raise c.fail("engine.name", str(e)) from None
    if "gpu_memory_utilization" in ed:
        u = ed["gpu_memory_utilization"]
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 < u <= 1:
            raise c.fail("engine.gpu_memory_utilization", f"must be a number in (0, 1], got {u!r}")
    if "block_size" in ed:
        c.int(ed["block_size"], "engine.block_size", 1)

    # layout
    ld = c.mapping(doc["layout"], "layout", ("device", "gpu_set", "gpus", "tp", "pp", "ranks"))
    device = c.str(ld["device"], "layout.device", ("cuda", "cpu"))
    c.str(ld["gpu_set"], "layout.gpu_set")
    tp = c.int(ld["tp"], "layout.tp", 1)
    pp = c.int(ld["pp"], "layout.pp", 1)
    if tp * pp > 1 << 16:
        raise c.fail("layout.tp", f"TP {tp} x PP {pp} is implausibly large")
    n_ranks = tp * pp
    gpu_index: dict[int, dict] = {}
    for i, g in enumerate(c.list(ld["gpus"], "layout.gpus")):
        f = f"layout.gpus[{i}]"
        c.mapping(g, f, ("index", "name", "memory_bytes"))
        idx = c.int(g["index"], f"{f}.index", 0)
        c.str(g["name"], f"{f}.name")
        c.int(g["memory_bytes"], f"{f}.memory_bytes", 1)
        if idx in gpu_index:
            raise c.fail(f"{f}.index", f"GPU {idx} is listed twice")
        gpu_index[idx] = g
    if device == "cuda" and len(gpu_index) < n_ranks:
        raise c.fail("layout.gpus", f"{len(gpu_index)} GPU(s) for TP {tp} x PP {pp} = "
                                    f"{n_ranks} ranks")
    try:
        check_layout(spec, fmt, kvf, tp, pp, eng)
    except PlannerError as e:
        raise c.fail("layout.tp" if "TP" in str(e) else "layout", str(e)) from None
    stages = stage_layers(spec.layers, pp)
    lranks = c.list(ld["ranks"], "layout.ranks")
    if len(lranks) != n_ranks:
        raise c.fail("layout.ranks", f"{len(lranks)} entries; TP {tp} x PP {pp} needs {n_ranks}")
    used: dict[int, int] = {}
    for i, r in enumerate(lranks):
        f = f"layout.ranks[{i}]"
        c.mapping(r, f, ("rank", "stage", "tp_rank", "gpu", "layers"))
        for key, want in (("rank", i), ("stage", i // tp), ("tp_rank", i % tp)):
            if c.int(r[key], f"{f}.{key}", 0) != want:
                raise c.fail(f"{f}.{key}", f"is {r[key]}; rank {i} of TP {tp} x PP {pp} has "
                                           f"{key} {want}")
        if device == "cpu":
            if r["gpu"] is not None:
                raise c.fail(f"{f}.gpu", "must be null on device cpu")
        else:
            gi = c.int(r["gpu"], f"{f}.gpu", 0)
            if gi not in gpu_index:
                raise c.fail(f"{f}.gpu", f"GPU {gi} is not in layout.gpus")
            if gi in used:
                raise c.fail(f"{f}.gpu", f"GPU {gi} already holds rank {used[gi]}")
            used[gi] = i
        lay = c.list(r["layers"], f"{f}.layers")
        want_layers = list(stages[i // tp])
        if len(lay) != 2 or [c.int(x, f"{f}.layers", 0) for x in lay] != want_layers:
            raise c.fail(f"{f}.layers", f"{lay!r} is not stage {i // tp}'s layers {want_layers} "
                                        f"({spec.layers} layers over PP {pp})")

    # prediction
    prd = c.mapping(doc["prediction"], "prediction",
                    ("ranks", "kv_cache_bytes_per_token", "params"), ("warnings",))
    pranks = c.list(prd["ranks"], "prediction.ranks")
    if len(pranks) != n_ranks:
        raise c.fail("prediction.ranks", f"{len(pranks)} entries; TP {tp} x PP {pp} needs "
                                         f"{n_ranks}")
    ranks: list[dict] = []
    for i, r in enumerate(pranks):
        f = f"prediction.ranks[{i}]"
        c.mapping(r, f, ("rank", "bytes", "detail"))
        if c.int(r["rank"], f"{f}.rank", 0) != i:
            raise c.fail(f"{f}.rank", f"is {r['rank']}, expected {i} (ranks in order)")
        b = c.mapping(r["bytes"], f"{f}.bytes", LINE_ITEMS)
        for item in LINE_ITEMS:
            c.int(b[item], f"{f}.bytes.{item}", 0)
        det = r["detail"]
        if not isinstance(det, dict):
            raise c.fail(f"{f}.detail", f"expected a mapping, got {_kind(det)}")
        for part, items in det.items():
            if not isinstance(part, str) or not isinstance(items, dict):
                raise c.fail(f"{f}.detail", f"{part!r} must map names to byte counts")
            for k, v in items.items():
                if not isinstance(k, str):
                    raise c.fail(f"{f}.detail.{part}", f"key {k!r} is not a string")
                if part == "kv_cache" and k == "by_kind" and isinstance(v, dict):
                    for kind, row in v.items():  # per attention kind: {layers, window, ...}
                        c.mapping(row, f"{f}.detail.kv_cache.by_kind.{kind}",
                                  ("layers", "window", "tokens_per_sequence", "bytes"))
                        for kk, vv in row.items():
                            c.int(vv, f"{f}.detail.kv_cache.by_kind.{kind}.{kk}", 0)
                    continue
                c.int(v, f"{f}.detail.{part}.{k}", 0)
        gpu = lranks[i]["gpu"]
        ranks.append({"rank": i, "gpu": gpu, "bytes": dict(b), "detail": det})
    c.int(prd["kv_cache_bytes_per_token"], "prediction.kv_cache_bytes_per_token", 0)
    c.int(prd["params"], "prediction.params", 1)
    for i, wmsg in enumerate(c.list(prd.get("warnings", []), "prediction.warnings")):
        c.str(wmsg, f"prediction.warnings[{i}]")

    for opt in ("capacity", "performance"):
        if opt in doc:
            if not isinstance(doc[opt], dict):
                raise c.fail(opt, f"expected a mapping, got {_kind(doc[opt])}")
            c.freeform(doc[opt], opt)

    if verify:
        try:
            actual = plan_hash(doc)
        except (ValueError, TypeError):
            raise c.fail("hash", "the document holds values that cannot be hashed") from None
        if doc["hash"] != actual:
            raise c.fail("hash", "the plan was edited after it was written (prediction or inputs "
                                 "changed); re-plan it (planner recommend ... -o PLAN)")
        _check_prediction(c, doc, spec, fmt, kvf, tp, pp, wl, eng, device, qlm)

    return Plan(doc=doc, spec=spec, weights=fmt.key, kv_cache=kvf.key, tp=tp, pp=pp, workload=wl,
                engine=eng.name, device=device, quantize_lm_head=qlm, ranks=ranks,
                source={"kind": src["kind"], "path": src["path"]},
                gpus={"set": ld["gpu_set"], "gpus": [dict(g) for g in ld["gpus"]]})


def _check_prediction(c: _Check, doc: dict, spec, fmt, kvf, tp: int, pp: int, wl: Workload, eng,
                      device: str, qlm: bool) -> None:
    """Recompute the prediction from the plan's own spec, workload, precision, engine and layout
    and refuse a plan whose stored figures differ, whatever its hash says: the runtime sizes its
    allocations (and its free-memory check) by these numbers. The first differing field is named."""
    import dataclasses

    from planner.memory import estimate

    ed = doc["engine"]
    if "block_size" in ed and ed["block_size"] != eng.kv_block_tokens and eng.kv_block_tokens:
        eng = dataclasses.replace(eng, kv_block_tokens=ed["block_size"])
    try:
        est = estimate(spec, fmt, kvf, tp, pp, wl, eng, device, qlm)
    except PlannerError as e:
        raise c.fail("prediction", f"cannot be recomputed from the plan's inputs ({e})") from None
    prd = doc["prediction"]
    expected = [("prediction.params", prd["params"], est.params),
                ("prediction.kv_cache_bytes_per_token", prd["kv_cache_bytes_per_token"],
                 est.kv_bytes_per_token)]
    for r, stored in zip(est.ranks, prd["ranks"]):
        b = r.bytes()
        expected += [(f"prediction.ranks[{r.rank}].bytes.{k}", stored["bytes"][k], b[k])
                     for k in LINE_ITEMS]
        want_detail = {k: dict(v) for k, v in r.detail.items()}
        expected.append((f"prediction.ranks[{r.rank}].detail", stored["detail"], want_detail))
    for field, have, want in expected:
        if have != want:
            shown = (f"{have:,} stored, {want:,} recomputed" if isinstance(have, int)
                     and isinstance(want, int) else "differs from the recomputed one")
            raise c.fail(field, f"{shown} from the plan's model, workload, precision, engine and "
                                "layout: the prediction was edited or comes from another planner "
                                "version; re-plan it (planner recommend ... -o PLAN)")
