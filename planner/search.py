"""Plan search and capacity (DESIGN §5 capacity, §7 search).

Candidates are weight format × KV format × TP × PP on a GPU set. Each is either rejected with a reason
(TP does not divide the heads, a group does not divide the split dimension, fp8 on a card without
fp8, the engine does not run the format) or evaluated: the per-rank prediction against each card's
usable memory, headroom, capacity (largest batch at the context, longest context at the batch, the
KV-token budget and, for paged engines, KV blocks) and a roofline performance estimate.

Capacity is exact: the memory model is monotone in batch and context, so an exponential then binary
search finds the value that fits while the next one does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.engines import EngineProfile, engine as get_engine
from planner.errors import InfeasibleError, InputError
from planner.memory import Estimate, Workload, estimate
from planner.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from planner.perf import Roofline, roofline
from planner.precision import KVFormat, WeightFormat, kv_format, weight_format
from planner.spec import ModelSpec
from planner.units import fmt_bytes, parse_bytes



@dataclass(frozen=True)
class Margin:
    """Memory to keep free on every GPU: the larger of a fraction of its memory and a size. The
    engine's own cap (vLLM's gpu_memory_utilization) already leaves memory unused and counts
    toward it."""

    fraction: float = 0.05
    bytes: int = 1 << 30

    def required(self, memory_bytes: int, usable_bytes: int) -> int:
        """Headroom a rank must keep inside its usable memory."""
        want = max(int(memory_bytes * self.fraction), self.bytes)
        return max(0, want - (memory_bytes - usable_bytes))

    def describe(self) -> str:
        parts = ([f"{self.fraction * 100:g}%"] if self.fraction else []) + \
                ([fmt_bytes(self.bytes)] if self.bytes else [])
        return " or ".join(parts) + (", whichever is larger" if len(parts) == 2 else "") \
            if parts else "none"


DEFAULT_MARGIN = Margin()
"""Keep at least 5% of each GPU's memory or 1 GiB free, whichever is larger."""


def parse_margin(text: str) -> Margin:
    """``--margin``: '5%', '2GiB', '5%,1GiB' (the larger of the two) or '0' (none)."""
    frac, size = 0.0, 0
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items or len(items) > 2:
        raise InputError(f"--margin must be a percentage, a size or both (like 5%, 1GiB or "
                         f"5%,1GiB), got {text!r}")
    for item in items:
        if item.endswith("%"):
            try:
                frac = float(item[:-1]) / 100
            except ValueError:
                frac = -1.0
            if not 0 <= frac < 1:  # also NaN
                raise InputError(f"--margin percentage must be in [0, 100), got {item!r}")
        else:
            size = parse_bytes(item, "--margin")
    return Margin(frac, size)

# Formats a search tries when the user names none: the registry's formats the engine runs, without
# the comparison-only per-tensor absmax and without bf16 (same bytes as fp16) and fp32.
DEFAULT_WEIGHTS = ("fp16", "fp8", "int8", "llm-int8", "int4-g128-zp", "int4-g128", "nf4", "int4")
DEFAULT_WEIGHTS_GGML = ("fp16", "q8_0", "q6_k", "q5_k", "q4_k", "q4_0", "q3_k", "q2_k")
DEFAULT_KV = ("fp16", "fp8", "int8", "int4")
_KV_ORDER = {"fp16": 0, "bf16": 0, "fp8": 1, "int8": 2, "int4": 3}
MAX_SEARCH_TOKENS = 1 << 24
"""Longest context capacity searches look at (16 M tokens)."""


def usable_bytes(device, eng: EngineProfile) -> int:
    """Memory a rank may fill on a device: the engine's utilization cap of the total (vLLM), or the
    total; never more than the free memory where the set was detected (``local``, ``cpu``)."""
    cap = device.memory_bytes
    if eng.gpu_memory_utilization:
        cap = int(device.memory_bytes * eng.gpu_memory_utilization)
    if device.free_bytes is not None:
        cap = min(cap, device.free_bytes)
    return cap


@dataclass
class Candidate:
    """One evaluated layout: the prediction against the devices it would run on."""

    weights: WeightFormat
    kv: KVFormat
    tp: int
    pp: int
    estimate: Estimate
    devices: tuple
    """Device of each rank (rank order)."""
    usable: tuple[int, ...]
    """Usable bytes of each rank's device."""
    margin: tuple[int, ...] = ()
    """Headroom each rank should keep (the problem's Margin; empty = none)."""
    roofline: Roofline | None = None
    max_batch: int | None = None
    max_context: int | None = None
    max_context_limited_by_model: bool = False
    kv_cache_tokens: int | None = None
    kv_blocks: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def headroom(self) -> int:
        """Smallest usable − total over the ranks (negative: does not fit)."""
        return min(u - r.total for u, r in zip(self.usable, self.estimate.ranks))

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    @property
    def comfortable(self) -> bool:
        """Every rank keeps its safety margin free."""
        return all(u - r.total >= m for u, r, m in
                   zip(self.usable, self.estimate.ranks, self.margin or (0,) * len(self.usable)))

    @property
    def worst_rank(self) -> int:
        return min(range(len(self.usable)),
                   key=lambda i: self.usable[i] - self.estimate.ranks[i].total)

    @property
    def cost_per_hour(self) -> float | None:
        prices = [d.profile.price_per_hour_usd for d in self.devices]
        if any(p is None for p in prices):
            return None
        return float(sum(prices))

    @property
    def cost_per_million_tokens(self) -> float | None:
        c = self.cost_per_hour
        if c is None or not self.roofline or self.roofline.decode_tokens_per_s <= 0:
            return None
        return c / (self.roofline.decode_tokens_per_s * 3600) * 1e6

    def label(self) -> str:
        return f"{self.weights.key} · KV {self.kv.key} · TP {self.tp} · PP {self.pp}"

    def to_json(self) -> dict:
        est = self.estimate.to_json()
        ranks = []
        for r, dev, u in zip(est["ranks"], self.devices, self.usable):
            ranks.append({**r, "gpu": {"index": dev.index, "name": dev.profile.name,
                                       "memory_bytes": dev.memory_bytes, "usable_bytes": u},
                          "headroom_bytes": u - r["bytes"]["total"]})
        return {"precision": {"weights": self.weights.key, "kv_cache": self.kv.key},
                "tp": self.tp, "pp": self.pp, "gpus": self.gpus, "fits": self.fits,
                "headroom_bytes": self.headroom, "keeps_margin": self.comfortable, "max_batch": self.max_batch,
                "max_context": self.max_context,
                "max_context_limited_by_model": self.max_context_limited_by_model,
                "kv_cache_tokens": self.kv_cache_tokens, "kv_blocks": self.kv_blocks,
                "performance": self.roofline.to_json() if self.roofline else None,
                "cost_per_hour_usd": self.cost_per_hour,
                "cost_per_million_tokens_usd": self.cost_per_million_tokens,
                "engine": est["engine"], "workload": est["workload"], "ranks": ranks}


@dataclass(frozen=True)
class Rejected:
    """A candidate that cannot run, and why."""

    weights: str
    kv: str
    tp: int
    pp: int
    reason: str
    shortfall_bytes: int = 0
    """For "does not fit": bytes missing on the worst rank."""

    def to_json(self) -> dict:
        return {"precision": {"weights": self.weights, "kv_cache": self.kv}, "tp": self.tp,
                "pp": self.pp, "reason": self.reason, "shortfall_bytes": self.shortfall_bytes}


@dataclass(frozen=True)
class Problem:
    """Everything a search holds fixed: model, devices, workload, engine and options."""

    spec: ModelSpec
    devices: tuple
    """Every device of the set, largest first (ranks take them in this order)."""
    kind: str
    """gpu or cpu."""
    workload: Workload
    engine: EngineProfile
    quantize_lm_head: bool = False
    margin: Margin = DEFAULT_MARGIN

    @property
    def device(self) -> str:
        return "cpu" if self.kind == "cpu" else "cuda"


def make_problem(spec: ModelSpec, gpuset, workload: Workload, engine: str | EngineProfile,
                 quantize_lm_head: bool = False, margin: Margin = DEFAULT_MARGIN) -> Problem:
    """The search problem; ``engine`` is a key or a profile already configured with the user's
    engine options (planner.engines.configure)."""
    eng = engine if isinstance(engine, EngineProfile) else get_engine(engine)
    workload.validate()
    devices = tuple(sorted(gpuset.devices, key=lambda d: -d.memory_bytes))
    return Problem(spec, devices, gpuset.kind, workload, eng, quantize_lm_head, margin)


def _native_check(fmt: WeightFormat, kvf: KVFormat, devices) -> str | None:
    for d in devices:
        for key, needs in ((fmt.key, fmt.min_compute_capability),
                           (f"KV {kvf.key}", kvf.min_compute_capability)):
            cc = d.profile.compute_capability
            if needs > (0, 0) and (cc is None or cc < needs) and \
                    not d.profile.runs_natively(key.removeprefix("KV ")):
                return (f"{key} needs compute capability {needs[0]}.{needs[1]}+ "
                        f"({d.profile.name} is "
                        f"{'%d.%d' % cc if cc else 'not an NVIDIA GPU'})")
    return None


def place(p: Problem, tp: int, pp: int) -> tuple:
    """The device of each rank (stage-major) for TP ``tp`` × PP ``pp``: each TP group is
    ``tp`` identical cards (the engines shard a layer evenly and require it); stages take the
    groups with the most memory, then the fastest memory, first. InfeasibleError when the set
    has too few GPUs or too few identical ones."""
    n = tp * pp
    if n > len(p.devices):
        raise InfeasibleError(f"TP {tp} × PP {pp} needs {n} GPUs; the set has {len(p.devices)}")
    by_card: dict[str, list] = {}
    for d in p.devices:
        by_card.setdefault(d.profile.name, []).append(d)
    groups = [cards[i:i + tp] for cards in by_card.values()
              for i in range(0, len(cards) - tp + 1, tp)]
    if len(groups) < pp:
        have = ", ".join(f"{len(c)} x {name}" for name, c in by_card.items())
        raise InfeasibleError(f"TP {tp} × PP {pp} needs {pp} group(s) of {tp} identical GPUs "
                              f"(a TP group shards each layer evenly); the set has {have}")
    groups.sort(key=lambda g: (-g[0].memory_bytes, -g[0].profile.memory_bandwidth_bytes_per_s))
    return tuple(d for g in groups[:pp] for d in g)


def stage_profiles(c: "Candidate") -> list:
    """The card of each pipeline stage, for its roofline speed (a TP group's cards are alike)."""
    return [c.devices[s * c.tp].profile for s in range(c.pp)]


def evaluate(p: Problem, fmt: WeightFormat, kvf: KVFormat, tp: int, pp: int,
             workload: Workload | None = None) -> Candidate:
    """The prediction for one layout on the problem's devices. Raises InfeasibleError."""
    devices = place(p, tp, pp)
    why = None if p.kind == "cpu" else _native_check(fmt, kvf, devices)  # CPUs emulate every format
    if why:
        raise InfeasibleError(why)
    est = estimate(p.spec, fmt, kvf, tp, pp, workload or p.workload, p.engine, p.device,
                   p.quantize_lm_head)
    usable = tuple(usable_bytes(d, p.engine) for d in devices)
    margin = tuple(p.margin.required(d.memory_bytes, u) for d, u in zip(devices, usable))
    return Candidate(fmt, kvf, tp, pp, est, devices, usable, margin)


def _fits(p: Problem, c: Candidate, wl: Workload) -> bool:
    est = estimate(p.spec, c.weights, c.kv, c.tp, c.pp, wl, p.engine, p.device, p.quantize_lm_head)
    return all(r.total <= u for r, u in zip(est.ranks, c.usable))


def _largest(pred, lo: int, limit: int) -> int:
    """Largest x in [lo, limit] with pred(x) true, for pred monotone (true, then false) and
    pred(lo) true: doubling until pred fails, then bisection."""
    while lo < limit:
        nxt = min(max(lo * 2, lo + 1), limit)
        if not pred(nxt):
            hi = nxt
            break
        lo = nxt
    else:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_batch(p: Problem, c: Candidate, wl: Workload, limit: int = 1 << 20) -> int:
    """Largest batch that fits at the workload's prompt and new tokens (0 if one does not)."""
    def ok(b: int) -> bool:
        return _fits(p, c, Workload(b, wl.prompt_tokens, wl.new_tokens))
    return _largest(ok, 1, limit) if ok(1) else 0


def max_context(p: Problem, c: Candidate, wl: Workload) -> tuple[int, bool]:
    """Longest context (prompt + the workload's new tokens) that fits at the workload's batch,
    capped at the model's max context; and whether the cap (not memory) set it. 0 if none fits."""
    new = wl.new_tokens

    def ok(ctx: int) -> bool:
        return _fits(p, c, Workload(wl.batch, ctx - new, new))
    start = new + 1
    if not ok(start):
        return 0, False
    cap = p.spec.max_context
    if cap >= start and ok(cap):
        return cap, True
    return _largest(ok, start, max(start, min(cap, MAX_SEARCH_TOKENS))), False


def kv_budget(p: Problem, c: Candidate) -> tuple[int, int | None]:
    """KV-cache tokens the free memory holds at the workload (per sequence-agnostic total across
    the batch), and KV blocks for paged engines: the pool vLLM carves after weights, activations
    and overhead, on the tightest rank."""
    tokens = None
    blocks = None
    for r, u in zip(c.estimate.ranks, c.usable):
        per_token = r.detail["kv_cache"]["bytes_per_token_per_layer"] * \
            r.detail["kv_cache"]["layers"]
        if per_token <= 0:
            continue
        pool = u - r.weights - r.activations - r.overhead
        if p.engine.kv_block_tokens:
            nb = max(0, pool // (per_token * p.engine.kv_block_tokens))
            blocks = nb if blocks is None else min(blocks, nb)
            t = nb * p.engine.kv_block_tokens
        else:
            t = max(0, pool // per_token)
        tokens = t if tokens is None else min(tokens, t)
    return tokens or 0, blocks


def finish(p: Problem, c: Candidate, gpu_profile=None) -> Candidate:
    """Add capacity, the KV budget and the roofline to a candidate that fits."""
    c.roofline = roofline(c.estimate, gpu_profile or stage_profiles(c))
    if c.fits:
        c.max_batch = max_batch(p, c, p.workload)
        c.max_context, c.max_context_limited_by_model = max_context(p, c, p.workload)
        c.kv_cache_tokens, c.kv_blocks = kv_budget(p, c)
    return c


def _weight_rank(fmt: WeightFormat, measured: dict[str, tuple] | None) -> tuple:
    """A weight format's place in the quality order: measured formats first, by their measured
    loss (``planner.quality.measured_order``: Δ perplexity, then KL); the rest after them in the
    registry's published order."""
    if measured is None:
        return (fmt.quality_rank,)
    if fmt.key in measured:
        return (0, *measured[fmt.key], 0)
    return (1, 0, 0.0, fmt.quality_rank)


def _tier(objective: str, fmt: WeightFormat, kvf: KVFormat, tp: int, pp: int,
          measured: dict[str, tuple] | None = None) -> tuple:
    """The part of an objective's order known before evaluating a candidate (its tier)."""
    q = (*_weight_rank(fmt, measured), _KV_ORDER.get(kvf.key, 9))
    if objective == "quality":
        return q
    if objective == "gpus":
        return (tp * pp, *q)
    if objective == "serve":
        return (tp * pp, quality_class(fmt, kvf))
    return ()


EIGHT_BIT_RANK = 30
"""Weight formats with a quality_rank below this are the 8-bit ones (fp8, int8, LLM.int8(), GGML
q8_0): published as matching fp16 (GLM-130B INT8, seed 000; LLM.int8(), seed 002)."""


def quality_class(fmt: WeightFormat, kvf: KVFormat) -> int:
    """0 lossless (fp16/bf16/fp32 weights and KV cache), 1 no worse than 8-bit (weights below
    EIGHT_BIT_RANK, KV of 8 bits or more), 2 lower bit-widths: the serve objective's order
    between plans on as many GPUs."""
    w = 0 if fmt.lossless else (1 if fmt.quality_rank < EIGHT_BIT_RANK else 2)
    k = 0 if kvf.lossless else (1 if kvf.bits >= 8 else 2)
    return max(w, k)


def _sig(x: float) -> float:
    """A speed rounded to 4 significant digits: plans that differ by floating-point noise tie,
    and the tie goes to fewer GPUs."""
    return float(f"{x:.4g}")


SPEED_TIE = 0.10
"""Serve objective: roofline decode speeds within 10% of the best of their group count as equal
(the roofline is a ceiling, not a benchmark), and the quality order decides between them."""


def _sort_key(objective: str, measured: dict[str, tuple] | None = None,
              fitting: list[Candidate] = ()):
    """Serve (the default): plans that keep the safety margin free first, then the fewest GPUs,
    lossless before 8-bit before lower (quality_class), then the faster (speeds within SPEED_TIE
    of the best of that group tie), then the quality order. Quality: lossless formats first,
    then by published quality loss (the registry's
    quality_rank: GLM-130B's INT8 ~ FP16 > INT4; RPTQ's lower bit-widths below), or by the loss
    measured for this model (``measured``, from ``planner quality``), KV formats the same way; ties
    go to the faster plan, then to fewer GPUs."""
    def tps(c: Candidate) -> float:
        return _sig(c.roofline.decode_tokens_per_s) if c.roofline else 0.0

    def quality(c: Candidate):
        return (*_tier("quality", c.weights, c.kv, c.tp, c.pp, measured), -tps(c), c.gpus)

    if objective == "serve":
        def group(c: Candidate):
            return (not c.comfortable, *_tier("serve", c.weights, c.kv, c.tp, c.pp))
        best: dict[tuple, float] = {}
        for c in fitting:
            best[group(c)] = max(best.get(group(c), 0.0), tps(c))

        def serve(c: Candidate):
            top = best.get(group(c), 0.0)
            return (*group(c), -top if tps(c) >= (1 - SPEED_TIE) * top else -tps(c),
                    *quality(c))
        return serve
    if objective == "latency":
        def latency(c: Candidate):
            r, wl = c.roofline, c.estimate.workload
            if not r:
                return (float("inf"), *quality(c))
            return (_sig(r.prefill_s + r.decode_step_s * wl.new_tokens), *quality(c))
        return latency
    if objective == "quality":
        return quality
    if objective == "gpus":
        return lambda c: (c.gpus, *quality(c))
    if objective == "throughput":
        return lambda c: (-tps(c), *quality(c))
    if objective == "cost":
        def cost(c: Candidate):
            v = c.cost_per_million_tokens
            return (v if v is not None else float("inf"), *quality(c))
        return cost
    raise InputError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


MAX_LAYOUT_GPUS = 64
"""The most GPUs (TP × PP) one searched layout spans (8 nodes of 8): a bigger set is searched for
layouts up to this size, so ``--gpus 1024x3090`` costs what ``64x3090`` does (a 405B model: ~20 s
on one core). ``--tp``/``--pp`` name a larger layout explicitly."""


MAX_SWEEP_CELLS = 1024
"""The most (weights × KV × batch × context) cells ``planner sweep`` computes (about 10 ms each);
a larger grid is refused in one line before the first estimate."""


def layouts(p: Problem, tp: int | None = None, pp: int | None = None) -> list[tuple[int, int]]:
    """(TP, PP) pairs to try: TP among the divisors of the set size and the powers of two up to it,
    PP so that TP × PP fits in the set, in :data:`MAX_LAYOUT_GPUS` and in the model's layers."""
    n = len(p.devices)
    if tp is not None or pp is not None:
        return [(tp or 1, pp or 1)]
    cap = min(n, MAX_LAYOUT_GPUS)
    tps = sorted({d for d in range(1, cap + 1) if n % d == 0} |
                 {1 << k for k in range(cap.bit_length()) if 1 << k <= cap})
    return [(t, q) for t in tps for q in range(1, min(cap // t, p.spec.layers) + 1)]


def search(p: Problem, weights: list[str] | None = None, kv: list[str] | None = None,
           objective: str = DEFAULT_OBJECTIVE, tp: int | None = None, pp: int | None = None,
           finish_top: int | None = None,
           best_only: bool = False,
           measured: dict[str, tuple] | None = None) -> tuple[list[Candidate], list[Rejected]]:
    """Every candidate, fitting ones ranked by the objective (each with capacity and roofline when
    ``finish_top`` is None, else only the first ``finish_top``), and the rejected with reasons.

    ``measured``: format key -> measured loss for this model (``planner.quality.measured_order``);
    the quality order then puts those formats first by that loss, the others after in registry order.

    ``best_only``: stop after the first tier of the objective's order that holds a fitting plan
    (the later tiers cannot beat it); the lists then cover only the tiers evaluated."""
    _sort_key(objective, measured)  # an unknown objective fails before the search
    if weights is None:
        weights = [k for k in (DEFAULT_WEIGHTS_GGML if p.engine.name == "llama.cpp"
                               else DEFAULT_WEIGHTS)]
    if kv is None:
        kv = [k for k in DEFAULT_KV if k in p.engine.kv_formats]
    fmts = [weight_format(k) for k in weights]
    kvfs = [kv_format(k) for k in kv]
    fitting: list[Candidate] = []
    rejected: list[Rejected] = []
    order = sorted(((f, k, t, q) for f in fmts for k in kvfs for t, q in layouts(p, tp, pp)),
                   key=lambda x: _tier(objective, *x, measured))
    tier = None
    for fmt, kvf, t, q in order:
        if best_only and _tier(objective, fmt, kvf, t, q, measured) != tier and any(
                c.comfortable or objective != "serve" for c in fitting):
            break
        tier = _tier(objective, fmt, kvf, t, q, measured)
        try:
            c = evaluate(p, fmt, kvf, t, q)
        except InfeasibleError as e:
            rejected.append(Rejected(fmt.key, kvf.key, t, q, str(e)))
            continue
        if c.fits:
            c.roofline = roofline(c.estimate, stage_profiles(c))
            fitting.append(c)
            continue
        w = c.worst_rank
        short = c.estimate.ranks[w].total - c.usable[w]
        rejected.append(Rejected(
            fmt.key, kvf.key, t, q,
            f"does not fit: rank {w} needs {short:,} bytes more than the {c.usable[w]:,} usable "
            f"on its {c.devices[w].profile.name}", shortfall_bytes=short))
    fitting.sort(key=_sort_key(objective, measured, fitting))
    for i, c in enumerate(fitting):
        if finish_top is None or i < finish_top:
            finish(p, c)
    return fitting, rejected


def smallest_shortfall(rejected: list[Rejected]) -> Rejected | None:
    """The "does not fit" rejection that misses by the least."""
    misses = [r for r in rejected if r.shortfall_bytes > 0]
    return min(misses, key=lambda r: r.shortfall_bytes) if misses else None
