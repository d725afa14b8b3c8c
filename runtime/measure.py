"""Memory measurement per phase: MemTracker categories on CPU, the CUDA caching allocator and NVML on
CUDA, host RSS and free memory."""

from __future__ import annotations

import contextlib
import os

import torch


def meminfo_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (bytes); 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process from /proc/self/status (bytes)."""
    cur = peak = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return cur, peak


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storages counted once)."""
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        key = (st.data_ptr(), st.device)
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def model_bytes(model: torch.nn.Module) -> int:
    return storage_bytes([*model.parameters(), *model.buffers()])


class PhaseTracker:
    """Peak bytes allocated during a phase beyond what existed at its start.

    CPU: ``torch.distributed._tools.mem_tracker.MemTracker`` (every tensor storage created by an
    op in its context, by category) with the model, KV cache and inputs registered as external, so
    the peak above the baseline is the phase's transient (activation) memory. CUDA: the caching
    allocator's ``max_memory_allocated`` after ``reset_peak_memory_stats``.

    On CPU ``modules`` also holds, per module (its qualified name), the peak transient bytes
    while that module ran: the sub-block moments planner/activations.py predicts are compared
    with them (runtime/cli.py ``MODULE_GROUPS``).
    """

    def step(self) -> None:
        """Call between forward calls of one phase (MemTracker refuses a module's second call
        otherwise); overall peaks are kept."""
        mt = getattr(self, "_mt", None)
        if mt is not None:
            self._collect()
            mt.reset_mod_stats()

    def _collect(self) -> None:
        """Fold MemTracker's per-module peaks (totals) of the calls so far into ``modules``."""
        for st in self._mt.memory_tracking.values():
            peak = st.local_peak.get(self.device)
            if peak is None:
                continue
            name = st.mod_fqn
            self.modules[name] = max(self.modules.get(name, 0), int(peak) - self._base)

    def __init__(self, device: torch.device, external=()):
        self.device = device
        self.external = list(external)
        self.peak_bytes = 0
        self.categories: dict[str, int] = {}
        self.modules: dict[str, int] = {}
        self._base = 0

    @contextlib.contextmanager
    def track(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            yield self
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - base
            self.categories = {"reserved": torch.cuda.memory_reserved()}
            return
        from torch.distributed._tools.mem_tracker import MemTracker
        mt = MemTracker()
        mt.track_external(*self.external)
        self._mt = mt
        with mt:
            base = mt.get_tracker_snapshot("current").get(self.device, {})
            base_total = sum(v for k, v in base.items() if str(k) == "Total")
            self._base = base_total
            yield self
            peak = mt.get_tracker_snapshot("peak").get(self.device, {})
            self._collect()
        peak_total = sum(v for k, v in peak.items() if str(k) == "Total")
        self.peak_bytes = peak_total - base_total
        self.categories = {str(getattr(k, "value", k)): int(v) for k, v in peak.items() if v}


def cpu_categories(model: torch.nn.Module, extra=()) -> dict[str, int]:
    """MemTracker's current snapshot for the model (and extra tensors) by category, bytes."""
    from torch.distributed._tools.mem_tracker import MemTracker
    mt = MemTracker()
    mt.track_external(model, *extra)
    with mt:
        snap = mt.get_tracker_snapshot("current").get(torch.device("cpu"), {})
    return {str(getattr(k, "value", k)): int(v) for k, v in snap.items() if v}


def nvml_used_bytes(index: int) -> int | None:
    """Device memory in use by every process (NVML), or None without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
    except Exception:  # no NVML / no driver: the figure is simply absent
        return None


def nvml_free_bytes(index: int) -> int | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(h).free)
    except Exception:
        return None


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
