"""GPU profiles and GPU sets.

Profiles are the YAML files in ``hardware_profiles/`` (one per GPU, every number cited). A GPU set is
what a user types after ``--gpus``:

    4x3090          four RTX 3090s            h100:8        eight H100 SXM
    8xA100-40G      eight A100 40GB           3090          one RTX 3090
    2x4090+1x3090   a mixed set               local         what NVML sees on this machine
    cpu             one rank on the host      cpu:4         four ranks sharing the host's memory

Bytes are ints (``memory_bytes`` is the total NVML reports); throughput is dense (no sparsity).
NVML (``pynvml``) is imported only inside :func:`detect_local`; nothing heavy at module level.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field

from planner.errors import InputError, suggest
from planner.units import fmt_bytes

MAX_DEVICES = 1024
"""The largest GPU count a set may name (refused above it, in one line, before any search); more
is a typo, not a cluster this planner plans for. The search spans at most
planner.search.MAX_LAYOUT_GPUS of them per layout."""

INTERCONNECTS = ("nvlink", "pcie", "infinity-fabric", "host")
_FLOPS_KEYS = ("fp32", "fp16", "bf16", "fp8", "int8")
_SOURCED = ("memory_bytes", "memory_bandwidth_bytes_per_s", "flops_per_s",
            "link_bandwidth_bytes_per_s", "price_per_hour_usd")
# Vendor words that NVML/ROCm put in front of a model name ("NVIDIA GeForce RTX 3090", "Tesla T4").
_PREFIXES = ("nvidia", "geforce", "tesla", "amd", "instinct", "quadro")


@dataclass(frozen=True)
class GPUProfile:
    """One GPU model, loaded from ``hardware_profiles/<name>.yaml``."""

    name: str
    """Canonical lower-case name (``rtx-3090``, ``h100-sxm``)."""
    aliases: tuple[str, ...]
    """Other names it answers to, NVML device names among them (``NVIDIA GeForce RTX 3090``)."""
    vendor: str
    """``nvidia``, ``amd`` or ``generic`` (the host CPU)."""
    memory_bytes: int
    """Total device memory as NVML reports it (0 for ``cpu``: read at run time)."""
    memory_bandwidth_bytes_per_s: int
    """Peak device memory bandwidth."""
    flops_per_s: dict[str, int]
    """Dense (no sparsity) throughput: tensor-core ``fp16``/``bf16``/``fp8``/``int8``, non-tensor ``fp32``."""
    compute_capability: tuple[int, int] | None
    """CUDA compute capability (8, 6); None for AMD and the CPU."""
    native_formats: tuple[str, ...]
    """Registry weight-format keys its tensor cores run natively."""
    interconnect: str
    """``nvlink``, ``pcie``, ``infinity-fabric`` or ``host``."""
    link_bandwidth_bytes_per_s: int
    """Per-GPU, one-direction bandwidth an all-reduce can use."""
    pcie_gen: int | None
    """PCIe generation of the host link."""
    price_per_hour_usd: float | None
    """A public on-demand price per GPU-hour, or None."""
    sources: dict[str, str]
    """Field -> citation for every number above."""
    label: str = ""
    """Display name (``RTX 3090``)."""
    arch: str | None = None
    """Architecture name where a compute capability does not apply (``gfx942``)."""
    file: str = field(default="", compare=False)
    """The YAML file it came from."""

    def peak_flops(self, fmt_key: str) -> int:
        """Peak throughput the compute for weight format ``fmt_key`` runs at.

        fp32 -> fp32; bf16 -> bf16 tensor (fp32 where the card has no bf16); fp8 -> fp8 tensor where it
        runs natively, else fp16; fp16 and every weight-only format (int8, int4, nf4, ...: A16, the
        weights are dequantized to fp16) -> fp16 tensor. Falls back to fp32 where a key is missing (cpu).
        """
        from planner.precision import weight_format  # validates the key; light (no heavy imports)

        fmt = weight_format(fmt_key)
        if fmt.key == "fp32":
            order = ("fp32",)
        elif fmt.key == "bf16":
            order = ("bf16", "fp32")
        elif fmt.key == "fp8" and self.runs_natively("fp8"):
            order = ("fp8", "fp16", "fp32")
        else:
            order = ("fp16", "fp32")
        return next(self.flops_per_s[k] for k in order if k in self.flops_per_s)

    def runs_natively(self, fmt_key: str) -> bool:
        """True when the card computes ``fmt_key`` without emulation. fp8 needs sm89+ on NVIDIA;
        weight-only formats (int8, int4, ...) compute in fp16, so they need native fp16."""
        k = fmt_key.strip().lower()
        if k == "fp32":
            return True
        if k == "fp8":
            if "fp8" not in self.native_formats:
                return False
            return self.vendor != "nvidia" or (self.compute_capability or (0, 0)) >= (8, 9)
        if k in ("fp16", "bf16"):
            return k in self.native_formats
        return "fp16" in self.native_formats

    @property
    def display(self) -> str:
        """``RTX 3090``."""
        return self.label or self.name


def _norm(text: str) -> str:
    """Lower case without spaces, hyphens and underscores: 'RTX 3090' == 'rtx-3090' == 'rtx3090'."""
    return re.sub(r"[\s_\-]+", "", str(text).lower())


def _strip_prefixes(text: str) -> str:
    words = str(text).lower().split()
    while len(words) > 1 and words[0] in _PREFIXES:
        words = words[1:]
    return " ".join(words)


def _load_yaml(path: str):
    import yaml  # deferred: only profile loading needs it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


def _int(data: dict, key: str, where: str, minimum: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _profile_from_dict(data: dict, where: str) -> GPUProfile:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping")
    for key in ("name", "vendor", "interconnect"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if data["interconnect"] not in INTERCONNECTS:
        raise ValueError(f"{where}: interconnect must be one of {INTERCONNECTS}, got {data['interconnect']!r}")
    flops = data.get("flops_per_s")
    if not isinstance(flops, dict) or "fp32" not in flops:
        raise ValueError(f"{where}: flops_per_s must be a mapping with at least fp32")
    for k in flops:
        if k not in _FLOPS_KEYS:
            raise ValueError(f"{where}: flops_per_s key {k!r} is not one of {_FLOPS_KEYS}")
        _int(flops, k, f"{where}: flops_per_s", 1)
    cc_text = data.get("compute_capability")
    cc = None
    if cc_text is not None:
        m = re.fullmatch(r"(\d+)\.(\d+)", str(cc_text))
        if not m:
            raise ValueError(f"{where}: compute_capability must look like '8.6', got {cc_text!r}")
        cc = (int(m.group(1)), int(m.group(2)))
    price = data.get("price_per_hour_usd")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price <= 0):
        raise ValueError(f"{where}: price_per_hour_usd must be a positive number or null, got {price!r}")
    pcie_gen = data.get("pcie_gen")
    if pcie_gen is not None and (isinstance(pcie_gen, bool) or not isinstance(pcie_gen, int)):
        raise ValueError(f"{where}: pcie_gen must be an integer or null, got {pcie_gen!r}")
    sources = data.get("sources")
    if not isinstance(sources, dict):
        raise ValueError(f"{where}: sources must be a mapping of field -> citation")
    for key in _SOURCED:
        if not str(sources.get(key, "")).strip():
            raise ValueError(f"{where}: sources.{key} is missing")
    return GPUProfile(
        name=data["name"],
        aliases=tuple(str(a) for a in data.get("aliases") or ()),
        vendor=data["vendor"],
        memory_bytes=_int(data, "memory_bytes", where),
        memory_bandwidth_bytes_per_s=_int(data, "memory_bandwidth_bytes_per_s", where, 1),
        flops_per_s=dict(flops),
        compute_capability=cc,
        native_formats=tuple(data.get("native_formats") or ()),
        interconnect=data["interconnect"],
        link_bandwidth_bytes_per_s=_int(data, "link_bandwidth_bytes_per_s", where, 1),
        pcie_gen=pcie_gen,
        price_per_hour_usd=None if price is None else float(price),
        sources={str(k): str(v) for k, v in sources.items()},
        label=str(data.get("label") or data["name"]),
        arch=data.get("arch"),
        file=where,
    )


@functools.lru_cache(maxsize=1)
def _all() -> tuple[GPUProfile, ...]:
    import hardware_profiles

    out = []
    for fname in sorted(os.listdir(hardware_profiles.DIR)):
        if fname.endswith(".yaml"):
            out.append(_profile_from_dict(_load_yaml(os.path.join(hardware_profiles.DIR, fname)), fname))
    return tuple(out)


def profiles() -> list[GPUProfile]:
    """Every profile, sorted by file name (cached)."""
    return list(_all())


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, GPUProfile]:
    idx: dict[str, GPUProfile] = {}
    for p in _all():
        for key in (p.name, p.label, *p.aliases):
            idx.setdefault(_norm(key), p)
    return idx


def names() -> list[str]:
    """Every canonical name and alias (for suggestions and help)."""
    out: list[str] = []
    for p in _all():
        out.extend([p.name, *p.aliases])
    return out


def profile(name: str) -> GPUProfile:
    """The profile for a name, alias or NVML device name (case, spaces and hyphens ignored;
    'NVIDIA'/'GeForce'/'Tesla' prefixes optional). Unknown -> InputError with suggestions."""
    text = str(name).strip()
    idx = _index()
    for key in (_norm(text), _norm(_strip_prefixes(text))):
        if key and key in idx:
            return idx[key]
    canon = [p.name for p in _all()]
    raise InputError(f"unknown GPU {text!r}{_suggest_profiles(text)} (known: {', '.join(canon)})")


def _suggest_profiles(text: str, n: int = 3) -> str:
    """'; did you mean ...?' naming profiles (not aliases), ranked by their closest name or alias."""
    import difflib

    query = _norm(_strip_prefixes(text))
    best: dict[str, float] = {}
    for p in _all():
        for key in (p.name, p.label, *p.aliases):
            k = _norm(key)
            score = difflib.SequenceMatcher(None, query, k).ratio()
            if query and len(query) >= 2 and query in k:
                score = max(score, 0.9)
            best[p.name] = max(best.get(p.name, 0.0), score)
    ranked = [name for name, score in sorted(best.items(), key=lambda kv: -kv[1]) if score >= 0.5][:n]
    # planner.errors.suggest formats the same way; it is the fallback when nothing scores
    return ("; did you mean " + " or ".join(repr(c) for c in ranked) + "?") if ranked else suggest(text, names())


@dataclass(frozen=True)
class Device:
    """One rank's device in a GPU set."""

    index: int
    """Position in the set (the NVML index for ``local``)."""
    profile: GPUProfile
    """Its GPU model."""
    memory_bytes: int
    """Total memory (NVML's total for ``local``; MemAvailable / N for ``cpu:N``)."""
    free_bytes: int | None
    """Free memory NVML reports (``local``), this rank's share of MemAvailable (``cpu``), else None."""


@dataclass(frozen=True)
class GPUSet:
    """A parsed ``--gpus`` value: the devices a plan may use."""

    text: str
    """What the user typed (stripped)."""
    devices: tuple[Device, ...]
    """One per rank, in order."""
    kind: str
    """``gpu`` or ``cpu``."""

    @property
    def count(self) -> int:
        return len(self.devices)

    @property
    def min_memory_bytes(self) -> int:
        """The smallest device's memory: a TP rank is limited by the smallest card."""
        return min(d.memory_bytes for d in self.devices)

    @property
    def is_mixed(self) -> bool:
        return len({d.profile.name for d in self.devices}) > 1

    def groups(self) -> list[tuple[GPUProfile, int]]:
        """Consecutive runs of the same model: [(RTX 4090, 2), (RTX 3090, 1)]."""
        out: list[tuple[GPUProfile, int]] = []
        for d in self.devices:
            if out and out[-1][0].name == d.profile.name:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((d.profile, 1))
        return out

    def describe(self) -> str:
        """'4 x RTX 3090 (24.00 GiB each)', '2 x RTX 4090 + 1 x RTX 3090', 'cpu: 2 ranks x 15.00 GiB'."""
        if self.kind == "cpu":
            each = fmt_bytes(self.devices[0].memory_bytes)
            if self.count == 1:
                return f"cpu: 1 rank, {each} available"
            return f"cpu: {self.count} ranks x {each} (sharing the host's available memory)"
        parts = [f"{n} x {p.display}" for p, n in self.groups()]
        if not self.is_mixed:
            sizes = {d.memory_bytes for d in self.devices}
            if len(sizes) == 1:
                return f"{parts[0]} ({fmt_bytes(self.devices[0].memory_bytes)} each)"
        return " + ".join(parts)


def _meminfo_available_bytes() -> int:
    """MemAvailable from /proc/meminfo, else free physical pages from os.sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    parts = line.split()
                    unit = parts[2].lower() if len(parts) > 2 else "kb"
                    return int(parts[1]) * (1024 if unit == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError) as e:
        raise InputError(f"cpu: cannot read the host's available memory (/proc/meminfo, sysconf: {e})") from e


def _count(text: str, whole: str, what: str = "count") -> int:
    t = text.strip()
    if not re.fullmatch(r"[+-]?\d+", t):
        raise InputError(f"GPU set {whole!r}: {what} must be a whole number, got {t!r}")
    n = int(t)
    if n < 1:
        raise InputError(f"GPU set {whole!r}: {what} must be at least 1, got {n}")
    if n > MAX_DEVICES:
        raise InputError(f"GPU set {whole!r}: {what} {n} is implausibly large (at most {MAX_DEVICES})")
    return n


def _cpu_set(text: str, ranks: int) -> GPUSet:
    cpu = profile("cpu")
    available = _meminfo_available_bytes()
    share = available // ranks
    devices = tuple(Device(i, cpu, share, share) for i in range(ranks))
    return GPUSet(text, devices, "cpu")


def _split_term(term: str, whole: str) -> tuple[int, str]:
    """'4x3090' -> (4, '3090'); 'h100:8' -> (8, 'h100'); '3090' -> (1, '3090')."""
    t = term.strip()
    if re.fullmatch(r"[+-]?\d+\s*\*.*", t):
        raise InputError(f"GPU set {whole!r}: write a count as '4x3090' or '3090:4', not with '*'")
    m = re.fullmatch(r"([+-]?\d+)\s*[x×]\s*(.*)", t, flags=re.IGNORECASE)
    if m:
        count_text, name = m.group(1), m.group(2).strip()
        if not name:
            raise InputError(f"GPU set {whole!r}: GPU name missing after {count_text}x (like 4x3090)")
        if ":" in name:
            raise InputError(f"GPU set {whole!r}: give the count once, as 4x3090 or 3090:4")
        return _count(count_text, whole), name
    if ":" in t:
        name, _, count_text = t.rpartition(":")
        if not name.strip():
            raise InputError(f"GPU set {whole!r}: GPU name missing before ':' (like h100:8)")
        return _count(count_text, whole), name.strip()
    m = re.fullmatch(r"[x×]\s*(.+)", t, flags=re.IGNORECASE)
    if m and _norm(t) not in _index():
        raise InputError(f"GPU set {whole!r}: count missing before 'x' (write 1x{m.group(1).strip()} "
                         f"or just {m.group(1).strip()})")
    if re.fullmatch(r"[+-]?\d+", t) and _norm(t) not in _index():
        raise InputError(f"GPU set {whole!r}: {t!r} is a count without a GPU (like {t}x3090)")
    return 1, t


def parse_gpu_set(text: str) -> GPUSet:
    """Parse '4x3090', '8xA100-40G', 'h100:8', '2x4090+1x3090', '3090', 'local', 'cpu', 'cpu:N'."""
    if not isinstance(text, str):
        raise InputError(f"GPU set must be text like 4x3090, got {text!r}")
    whole = text.strip()
    if not whole:
        raise InputError("GPU set is empty; give one like 4x3090, 8xA100-40G, 2x4090+1x3090, local or cpu")
    if whole.lower() == "local":
        return detect_local()
    terms = whole.split("+")
    if any(not t.strip() for t in terms):
        raise InputError(f"GPU set {whole!r}: empty term around '+' (join terms like 2x4090+1x3090)")
    parsed = [_split_term(t, whole) for t in terms]
    is_cpu = [_norm(name) in ("cpu", "host") for _, name in parsed]
    if any(is_cpu):
        if len(parsed) > 1:
            raise InputError(f"GPU set {whole!r}: cpu cannot be combined with other devices")
        return _cpu_set(whole, parsed[0][0])
    if any(_norm(name) == "local" for _, name in parsed):
        raise InputError(f"GPU set {whole!r}: 'local' stands alone (it means every GPU NVML sees)")
    total = sum(n for n, _ in parsed)
    if total > MAX_DEVICES:
        raise InputError(f"GPU set {whole!r}: {total} GPUs in all is implausibly large (at most {MAX_DEVICES})")
    devices: list[Device] = []
    for n, name in parsed:
        p = profile(name)
        for _ in range(n):
            devices.append(Device(len(devices), p, p.memory_bytes, None))
    return GPUSet(whole, tuple(devices), "gpu")


def _no_driver(reason: str) -> InputError:
    return InputError(f"local: no NVIDIA driver found (NVML: {reason}); use a GPU set like 4x3090 or cpu")


def detect_local() -> GPUSet:
    """The GPUs NVML sees on this machine: names, total and free memory. NVML counts every GPU
    (it ignores CUDA_VISIBLE_DEVICES). No driver, no pynvml or no GPUs -> InputError."""
    try:
        import pynvml  # deferred: only `local` needs NVML (from nvidia-ml-py)
    except ImportError as e:
        raise _no_driver(f"pynvml is not installed: {e}") from e
    nvml_error = getattr(pynvml, "NVMLError", OSError)
    try:
        pynvml.nvmlInit()
    except (nvml_error, OSError) as e:
        raise _no_driver(str(e) or type(e).__name__) from e
    try:
        found = []
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append((i, name, int(mem.total), int(mem.free)))
    except (nvml_error, OSError) as e:
        raise _no_driver(str(e) or type(e).__name__) from e
    finally:
        try:
            pynvml.nvmlShutdown()
        except (nvml_error, OSError):
            pass
    if not found:
        raise _no_driver("the driver reports no GPUs")
    devices = []
    for i, name, total, free in found:
        try:
            p = profile(name)
        except InputError as e:
            raise InputError(f"local: GPU {i} is {name!r}, which has no hardware profile; give the set "
                             f"by hand (like 4x3090) or add hardware_profiles/<name>.yaml") from e
        devices.append(Device(i, p, total, free))
    return GPUSet("local", tuple(devices), "gpu")
