"""What the TUI computes, without Textual: field validation, the plan search, the capacity map, plan
documents and export commands. The app runs these in worker threads; tests call them directly.

The search is the one ``planner recommend`` runs (same call, same defaults: every format the
engine runs when all are allowed), so the plans table holds the same plans in the same order.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from planner.errors import PlannerError
from planner.objectives import DEFAULT_OBJECTIVE
from planner.units import parse_tokens

TIGHT_FRACTION = 0.10
"""A capacity-map cell is "tight" when it fits with less than this fraction of usable memory free."""

MAP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Batch sizes (rows) of the capacity map."""

MAP_COLUMNS = 8
"""At most this many context columns: powers of two up to the model's max context."""

FIELDS = ("model", "gpus", "batch", "prompt", "new", "weights", "kv", "engine", "objective")


@dataclass(frozen=True)
class Inputs:
    """The form, as typed (strings) or picked."""

    model: str = ""
    gpus: str = ""
    batch: str = "1"
    prompt: str = "2048"
    new: str = "256"
    weights: tuple[str, ...] | None = None
    """Allowed weight formats; None = every format the engine runs (recommend's default)."""
    kv: tuple[str, ...] | None = None
    """Allowed KV-cache formats; None = the engine's (recommend's default)."""
    engine: str = "runtime"
    objective: str = DEFAULT_OBJECTIVE


@dataclass
class Result:
    """One recomputation: per-field errors, or the search's plans and rejections."""

    inputs: Inputs
    errors: dict[str, str] = field(default_factory=dict)
    """Field name (FIELDS) -> one-line message."""
    notes: dict[str, str] = field(default_factory=dict)
    """Field name -> what a valid value resolved to (shown dim beside the field)."""
    source: object | None = None
    gpuset: object | None = None
    problem: object | None = None
    plans: list = field(default_factory=list)
    rejected: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def weight_choices(engine: str) -> tuple[str, ...]:
    """Weight formats the search tries for ``engine`` when none are named (recommend's list)."""
    from planner.search import DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_GGML

    return DEFAULT_WEIGHTS_GGML if engine == "llama.cpp" else DEFAULT_WEIGHTS


def kv_choices(engine: str) -> tuple[str, ...]:
    from planner.engines import engine as get_engine
    from planner.search import DEFAULT_KV

    try:
        eng = get_engine(engine)
    except PlannerError:
        return DEFAULT_KV
    return tuple(k for k in DEFAULT_KV if k in eng.kv_formats)


def engine_names() -> list[str]:
    from planner.engines import engines

    return [e.name for e in engines()]


def _msg(e: BaseException) -> str:
    return " ".join(str(e).split())


def compute(inp: Inputs) -> Result:
    """Validate every field (each error stays with its field) and, when all are good, search."""
    from planner.engines import engine as get_engine
    from planner.hardware import parse_gpu_set
    from planner.memory import Workload
    from planner.search import OBJECTIVES, make_problem, search
    from planner.sources import resolve
    from planner.spec import param_count
    from planner.units import fmt_count

    res = Result(inp)
    text = inp.model.strip()
    if not text:
        res.errors["model"] = "type a catalog name or a path (ctrl+o lists the catalog)"
    else:
        try:
            res.source = resolve(os.path.expanduser(text))
            spec = res.source.spec
            res.notes["model"] = f"{spec.name} · {fmt_count(param_count(spec))} params"
        except PlannerError as e:
            res.errors["model"] = _msg(e)
        except OSError as e:  # resolve reports its own errors; this is a last guard for odd files
            res.errors["model"] = f"{text}: cannot read ({e.strerror or e})"
    try:
        res.gpuset = parse_gpu_set(inp.gpus)
        res.notes["gpus"] = res.gpuset.describe()
    except PlannerError as e:
        res.errors["gpus"] = _msg(e)
    numbers = {}
    for name, what, minimum in (("batch", "batch", 1), ("prompt", "prompt tokens", 1),
                                ("new", "new tokens", 0)):
        try:
            numbers[name] = parse_tokens(getattr(inp, name), what, minimum)
        except PlannerError as e:
            res.errors[name] = _msg(e)
    try:
        get_engine(inp.engine)
    except PlannerError as e:
        res.errors["engine"] = _msg(e)
    if inp.objective not in OBJECTIVES:
        res.errors["objective"] = f"unknown objective {inp.objective!r}"
    if inp.weights is not None and not inp.weights:
        res.errors["weights"] = "allow at least one weight format"
    if inp.kv is not None and not inp.kv:
        res.errors["kv"] = "allow at least one KV-cache format"
    if res.errors:
        return res
    wl = Workload(numbers["batch"], numbers["prompt"], numbers["new"])
    try:
        res.problem = make_problem(res.source.spec, res.gpuset, wl, inp.engine)
        res.plans, res.rejected = search(
            res.problem, list(inp.weights) if inp.weights is not None else None,
            list(inp.kv) if inp.kv is not None else None, inp.objective, None, None,
            finish_top=None)
    except PlannerError as e:
        res.errors["model"] = _msg(e)
    return res


# -- capacity map --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CapacityMap:
    """fits / tight / no for each (batch, context) cell of one plan's layout."""

    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    cells: tuple[tuple[str, ...], ...]
    """cells[i][j] for batches[i] × contexts[j]: "fits", "tight" or "no"."""
    current: tuple[int, int]
    """The workload's batch and context (prompt + new)."""


def map_contexts(max_context: int, current: int) -> tuple[int, ...]:
    """Powers of two up to the model's max context (its own value last), at most MAP_COLUMNS."""
    top = max(max_context, 2)
    cols = {top}
    c = 1
    while c < top:
        cols.add(c)
        c *= 2
    cols = sorted(x for x in cols if x >= 128 or x == top)
    return tuple(cols[-MAP_COLUMNS:])


def cell_state(totals, usable) -> str:
    """fits, tight (fits with under TIGHT_FRACTION of a rank's usable bytes free) or no."""
    head = [u - t for t, u in zip(totals, usable)]
    if min(head) < 0:
        return "no"
    if any(h < TIGHT_FRACTION * u for h, u in zip(head, usable)):
        return "tight"
    return "fits"


def capacity_map(problem, cand) -> CapacityMap:
    """The batch × context grid for ``cand``'s formats and layout on the problem's devices."""
    from planner.errors import PlannerError
    from planner.memory import Workload, estimate

    wl = problem.workload
    contexts = map_contexts(problem.spec.max_context, wl.context)
    rows = []
    for b in MAP_BATCHES:
        row = []
        for ctx in contexts:
            new = min(wl.new_tokens, ctx - 1)
            try:
                est = estimate(problem.spec, cand.weights, cand.kv, cand.tp, cand.pp,
                               Workload(b, ctx - new, new), problem.engine, problem.device,
                               problem.quantize_lm_head)
            except PlannerError:
                row.append("no")
                continue
            row.append(cell_state([r.total for r in est.ranks], cand.usable))
        rows.append(tuple(row))
    return CapacityMap(MAP_BATCHES, contexts, tuple(rows), (wl.batch, wl.context))


# -- plan files and commands -----------------------------------------------------------------------

def plan_doc(res: Result, cand) -> dict:
    """The document ``planner recommend -o`` writes for this candidate."""
    from planner.plan import candidate_document

    return candidate_document(cand, res.source, res.gpuset)


def save_plan(path: str, res: Result, cand, force: bool = False) -> str:
    """Write the plan file; returns the path written. InputError if it exists and not ``force``."""
    from planner.plan import write_plan

    path = os.path.expanduser(path.strip())
    write_plan(path, plan_doc(res, cand), force=force)
    return path


def default_plan_path(res: Result, cand) -> str:
    name = res.source.spec.name.split("/")[-1].lower()
    gpus = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in res.gpuset.text.lower())
    return f"{name}-{gpus}-{cand.weights.key}-tp{cand.tp}pp{cand.pp}.plan.yaml"


def export_commands(res: Result, cand) -> list[tuple[str, str, list[str]]]:
    """(engine, command or error, notes) for every ``planner export`` engine."""
    from planner.export import ENGINES, export_command, render
    from planner.plan import validate

    plan = validate(plan_doc(res, cand), "plan")
    out = []
    for eng in ENGINES:
        try:
            argv, notes = export_command(plan, eng)
            out.append((eng, render(argv), list(notes)))
        except PlannerError as e:
            out.append((eng, "", [f"cannot export: {_msg(e)}"]))
    return out


def with_field(inp: Inputs, name: str, value) -> Inputs:
    return dataclasses.replace(inp, **{name: value})


# -- the first screen ----------------------------------------------------------------------------

DEFAULT_MODEL = "qwen3-8b"
"""The model the first screen shows when none is given or remembered: a current, common size."""

DEFAULT_GPUS = "1x4090"
"""The GPU set of the first screen on a machine where NVML sees no GPU (no driver, a laptop, CI)."""

STATE_MAX_BYTES = 64 << 10
"""A remembered-state file larger than this is ignored, not read."""


def state_path() -> str:
    """Where the TUI remembers the last model and GPU set that gave plans:
    ``$XDG_STATE_HOME/planner/tui.json`` (default ``~/.local/state/planner/tui.json``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "planner", "tui.json")


def load_last() -> dict[str, str]:
    """The remembered ``model`` and ``gpus``; {} when there is no usable state file (missing, not
    a regular file, too large, not JSON, or not strings) — never an error: it is a convenience."""
    import json
    import stat

    path = state_path()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > STATE_MAX_BYTES:
            return {}
        with open(path, "rb") as f:
            doc = json.loads(f.read(STATE_MAX_BYTES + 1))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k in ("model", "gpus") if isinstance(v := doc.get(k), str)
            and 0 < len(v) <= 1000 and v.isprintable()}


def save_last(model: str, gpus: str) -> None:
    """Remember the model and GPU set (atomically; a failure to write is ignored)."""
    import json

    from planner.paths import atomic_write

    path = state_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps({"model": model, "gpus": gpus}) + "\n", force=True)
    except (OSError, PlannerError):
        pass


def local_gpus_available() -> bool:
    """NVML sees at least one GPU on this machine."""
    from planner.hardware import detect_local

    try:
        return bool(detect_local().devices)
    except (PlannerError, OSError):
        return False


def first_screen(model: str | None, gpus: str | None) -> tuple[str, str]:
    """The model and GPU set the TUI opens on: what the command line gave, else the last ones
    that gave plans, else DEFAULT_MODEL and this machine's GPUs (``local``) or DEFAULT_GPUS."""
    last = load_last() if model is None or gpus is None else {}
    if model is None:
        model = last.get("model", DEFAULT_MODEL)
    if gpus is None:
        gpus = last.get("gpus") or ("local" if local_gpus_available() else DEFAULT_GPUS)
    return model, gpus
