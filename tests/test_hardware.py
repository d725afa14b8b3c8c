"""GPU profiles (hardware_profiles/*.yaml) and GPU-set parsing (planner.hardware)."""

import json
import subprocess
import sys
import types

import pytest

from planner import hardware
from planner.errors import InputError
from planner.hardware import Device, GPUSet, parse_gpu_set, profile, profiles
from planner_testutil import REPO

GiB = 1 << 30
MiB = 1 << 20

REQUIRED = {"a10", "a100-40g", "a100-80g", "a10g", "b200", "cpu", "h100-pcie", "h100-sxm", "h200", "l4",
            "l40s", "mi300x", "rtx-2080-ti", "rtx-3090", "rtx-4090", "rtx-5090", "rtx-6000-ada", "t4",
            "v100-16g", "v100-32g"}

# Device names as NVML / nvidia-smi (rocm-smi for AMD) print them.
NVML_NAMES = {
    "NVIDIA GeForce RTX 2080 Ti": "rtx-2080-ti",
    "NVIDIA GeForce RTX 3090": "rtx-3090",
    "NVIDIA GeForce RTX 4090": "rtx-4090",
    "NVIDIA GeForce RTX 5090": "rtx-5090",
    "NVIDIA A10": "a10",
    "NVIDIA A10G": "a10g",
    "NVIDIA L4": "l4",
    "NVIDIA L40S": "l40s",
    "Tesla T4": "t4",
    "Tesla V100-SXM2-16GB": "v100-16g",
    "Tesla V100-PCIE-16GB": "v100-16g",
    "Tesla V100-SXM2-32GB": "v100-32g",
    "NVIDIA A100-SXM4-40GB": "a100-40g",
    "NVIDIA A100-PCIE-40GB": "a100-40g",
    "NVIDIA A100-SXM4-80GB": "a100-80g",
    "NVIDIA A100 80GB PCIe": "a100-80g",
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H200": "h200",
    "NVIDIA B200": "b200",
    "NVIDIA RTX 6000 Ada Generation": "rtx-6000-ada",
    "AMD Instinct MI300X": "mi300x",
}


def by_name():
    return {p.name: p for p in profiles()}


# --- profiles ---------------------------------------------------------------------------------


def test_every_required_profile_loads():
    assert REQUIRED <= set(by_name())


@pytest.mark.parametrize("p", profiles(), ids=lambda p: p.name)
def test_profile_fields_are_sourced_and_plausible(p):
    assert p.name == p.name.lower() and p.file == f"{p.name}.yaml"
    assert isinstance(p.memory_bytes, int) and not isinstance(p.memory_bytes, bool)
    for key in ("memory_bytes", "memory_bandwidth_bytes_per_s", "flops_per_s",
                "link_bandwidth_bytes_per_s", "price_per_hour_usd"):
        assert p.sources.get(key, "").strip(), f"{p.name}: no source for {key}"
    assert all(isinstance(v, int) and v > 0 for v in p.flops_per_s.values())
    assert p.interconnect in hardware.INTERCONNECTS
    if p.name == "cpu":
        assert p.memory_bytes == 0  # read at run time
        return
    assert p.memory_bytes > 8 * GiB
    assert 100e9 <= p.memory_bandwidth_bytes_per_s <= 20e12
    assert {"fp16", "fp32"} <= set(p.flops_per_s)
    # tensor fp16 beats non-tensor fp32; fp8/int8 at least as fast as fp16
    assert p.flops_per_s["fp16"] > p.flops_per_s["fp32"]
    for k in ("fp8", "int8"):
        if k in p.flops_per_s:
            assert p.flops_per_s[k] >= p.flops_per_s["fp16"]
    assert set(p.native_formats) <= {"fp16", "bf16", "fp8", "int8"}
    assert {k for k in p.flops_per_s if k != "fp32"} == set(p.native_formats)
    if p.price_per_hour_usd is not None:
        assert 0.05 < p.price_per_hour_usd < 50


@pytest.mark.parametrize("p", [p for p in profiles() if p.vendor == "nvidia"], ids=lambda p: p.name)
def test_fp8_only_from_sm89(p):
    has_fp8 = "fp8" in p.flops_per_s or "fp8" in p.native_formats
    assert has_fp8 == (p.compute_capability >= (8, 9))
    assert p.runs_natively("fp8") == has_fp8


def test_no_bf16_before_ampere():
    for name in ("rtx-2080-ti", "t4", "v100-16g", "v100-32g"):
        assert "bf16" not in profile(name).flops_per_s
        assert not profile(name).runs_natively("bf16")


def test_mi300x_is_amd_with_fp8():
    p = profile("mi300x")
    assert p.vendor == "amd" and p.compute_capability is None and p.arch == "gfx942"
    assert p.interconnect == "infinity-fabric" and p.runs_natively("fp8")


def test_aliases_unique_across_profiles():
    seen: dict[str, str] = {}
    for p in profiles():
        for key in {hardware._norm(k) for k in (p.name, p.label, *p.aliases)}:
            assert key not in seen, f"{key!r} is claimed by {seen.get(key)} and {p.name}"
            seen[key] = p.name


@pytest.mark.parametrize("nvml_name,expected", sorted(NVML_NAMES.items()))
def test_nvml_names_resolve(nvml_name, expected):
    assert profile(nvml_name).name == expected


@pytest.mark.parametrize("text", ["3090", "rtx3090", "RTX 3090", "rtx-3090", "geforce rtx 3090",
                                  "GeForce RTX 3090", "  Rtx_3090 "])
def test_aliases_are_case_space_and_hyphen_insensitive(text):
    assert profile(text).name == "rtx-3090"


def test_seed_facts_glm130b_hardware_table():
    # GLM-130B's table: RTX 3090 24 GB, RTX 2080 Ti 11 GB, V100 32 GB, A100 40 GB (GiB as NVML reports)
    assert profile("3090").memory_bytes == 24 * GiB
    assert profile("2080ti").memory_bytes == 11 * GiB
    assert profile("v100-32g").memory_bytes == 32 * GiB
    assert profile("a100-40g").memory_bytes == 40 * GiB


def test_datasheet_anchors():
    a100 = profile("a100-40g")
    assert a100.flops_per_s["fp16"] == 312 * 10**12 and a100.memory_bandwidth_bytes_per_s == 1555 * 10**9
    assert profile("a100-80g").memory_bandwidth_bytes_per_s == 2039 * 10**9
    h100 = profile("h100-sxm")
    assert h100.flops_per_s["fp16"] == 989_400 * 10**9 and h100.flops_per_s["fp8"] == 1_978_900 * 10**9
    assert h100.memory_bandwidth_bytes_per_s == 3_350 * 10**9
    assert profile("h100").name == "h100-sxm"
    assert profile("rtx-3090").link_bandwidth_bytes_per_s == 32 * 10**9  # PCIe 4.0 x16, not NVLink


def test_peak_flops_per_weight_format():
    h100, v100, cpu = profile("h100-sxm"), profile("v100-16g"), profile("cpu")
    assert h100.peak_flops("fp8") == h100.flops_per_s["fp8"]
    assert h100.peak_flops("bf16") == h100.flops_per_s["bf16"]
    for key in ("fp16", "int8", "int4", "int4-g128", "nf4", "llm-int8"):
        assert h100.peak_flops(key) == h100.flops_per_s["fp16"]  # weight-only: computes in fp16
    assert h100.peak_flops("fp32") == h100.flops_per_s["fp32"]
    assert v100.peak_flops("fp8") == v100.flops_per_s["fp16"]  # no fp8 on sm70: runs as fp16
    assert not v100.runs_natively("fp8") and v100.runs_natively("int4-g128")
    assert cpu.peak_flops("fp16") == cpu.flops_per_s["fp32"]
    with pytest.raises(InputError):
        h100.peak_flops("int3")


def test_profiles_are_cached():
    assert profiles()[0] is profiles()[0]


# --- GPU sets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,count,name", [
    ("4x3090", 4, "rtx-3090"),
    ("8xA100-40G", 8, "a100-40g"),
    ("8xa100-40g", 8, "a100-40g"),
    ("h100:8", 8, "h100-sxm"),
    ("3090", 1, "rtx-3090"),
    (" 4 x 3090 ", 4, "rtx-3090"),
    ("H100 : 8", 8, "h100-sxm"),
    ("2xmi300x", 2, "mi300x"),
    ("mi300x", 1, "mi300x"),
    ("4X4090", 4, "rtx-4090"),
])
def test_parse_homogeneous_sets(text, count, name):
    s = parse_gpu_set(text)
    assert s.kind == "gpu" and s.count == count and not s.is_mixed
    assert all(d.profile.name == name for d in s.devices)
    assert [d.index for d in s.devices] == list(range(count))
    assert s.min_memory_bytes == profile(name).memory_bytes
    assert all(d.free_bytes is None for d in s.devices)


def test_describe():
    assert parse_gpu_set("4x3090").describe() == "4 x RTX 3090 (24.00 GiB each)"
    assert parse_gpu_set("2x4090+1x3090").describe() == "2 x RTX 4090 + 1 x RTX 3090"


def test_parse_mixed_set():
    s = parse_gpu_set("2x4090 + 1x3090")
    assert s.count == 3 and s.is_mixed and s.text == "2x4090 + 1x3090"
    assert [d.profile.name for d in s.devices] == ["rtx-4090", "rtx-4090", "rtx-3090"]
    # TP ranks are limited by the smallest card: the 4090's 24564 MiB < the 3090's 24576 MiB
    assert s.min_memory_bytes == 24564 * MiB
    big = parse_gpu_set("1xa100-80g+1xa100-40g")
    assert big.min_memory_bytes == 40 * GiB


def test_cpu_sets_use_mem_available(monkeypatch):
    monkeypatch.setattr(hardware, "_meminfo_available_bytes", lambda: 30 * GiB)
    one = parse_gpu_set("cpu")
    assert one.kind == "cpu" and one.count == 1
    assert one.devices[0].memory_bytes == one.devices[0].free_bytes == 30 * GiB
    assert one.devices[0].profile.name == "cpu"
    four = parse_gpu_set(" cpu : 4 ")
    assert four.count == 4 and all(d.memory_bytes == 30 * GiB // 4 for d in four.devices)
    three = parse_gpu_set("cpu:3")
    assert three.min_memory_bytes == 30 * GiB // 3
    assert "cpu" in four.describe()


def test_meminfo_reader_reads_real_host():
    assert hardware._meminfo_available_bytes() > 0


def test_meminfo_falls_back_to_sysconf(monkeypatch):
    real_open = open

    def no_proc(path, *a, **k):
        if str(path) == "/proc/meminfo":
            raise OSError("unreadable")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(hardware.os, "sysconf", lambda key: {"SC_AVPHYS_PAGES": 1000,
                                                             "SC_PAGE_SIZE": 4096}[key])
    assert hardware._meminfo_available_bytes() == 4096 * 1000


@pytest.mark.parametrize("text,words", [
    ("4x3091", ["unknown GPU", "3091", "did you mean", "rtx-3090"]),
    ("0x3090", ["at least 1"]),
    ("x3090", ["count missing"]),
    ("4x", ["name missing"]),
    ("-2x3090", ["at least 1"]),
    ("4x3090+", ["empty term"]),
    ("+4x3090", ["empty term"]),
    ("cpu:0", ["at least 1"]),
    ("cpu:abc", ["whole number"]),
    ("cpu:", ["whole number"]),
    ("5000x3090", ["implausibly large"]),
    ("4097x3090", ["implausibly large"]),
    ("3000x3090+2000x4090", ["implausibly large"]),
    ("", ["empty"]),
    ("   ", ["empty"]),
    ("4*3090", ["4x3090"]),
    ("4", ["count without a GPU"]),
    ("a100:8", ["did you mean", "a100-40g", "a100-80g"]),
    ("4x3090:2", ["count once"]),
    (":8", ["name missing"]),
    ("cpu+4x3090", ["cpu cannot be combined"]),
    ("local+4x3090", ["stands alone"]),
    ("4xlocal", ["stands alone"]),
])
def test_bad_gpu_sets_raise_input_error(text, words):
    with pytest.raises(InputError) as exc:
        parse_gpu_set(text)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), msg


def test_non_string_gpu_set():
    with pytest.raises(InputError):
        parse_gpu_set(None)  # type: ignore[arg-type]


def test_unknown_profile_suggests():
    with pytest.raises(InputError, match="did you mean 'v100-16g' or 'v100-32g'"):
        profile("v100")


# --- local (NVML) -------------------------------------------------------------------------------


class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(devices=(), init_error=None):
    mod = types.ModuleType("pynvml")
    mod.NVMLError = _FakeNVMLError
    calls = {"shutdown": 0}

    def nvmlInit():
        if init_error:
            raise _FakeNVMLError(init_error)

    def nvmlShutdown():
        calls["shutdown"] += 1

    mod.nvmlInit = nvmlInit
    mod.nvmlShutdown = nvmlShutdown
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: devices[h][0]
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=devices[h][1], free=devices[h][2], used=devices[h][1] - devices[h][2])
    mod.calls = calls
    return mod


def test_local_with_two_fake_devices(monkeypatch):
    fake = _fake_pynvml([(b"NVIDIA GeForce RTX 4090", 24564 * MiB, 20 * GiB),
                         ("NVIDIA GeForce RTX 3090", 24576 * MiB, 23 * GiB)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    s = parse_gpu_set("local")
    assert isinstance(s, GPUSet) and s.text == "local" and s.kind == "gpu"
    assert s.devices == (Device(0, profile("4090"), 24564 * MiB, 20 * GiB),
                         Device(1, profile("3090"), 24576 * MiB, 23 * GiB))
    assert s.is_mixed and s.min_memory_bytes == 24564 * MiB
    assert fake.calls["shutdown"] == 1


def test_local_without_driver_fake(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error="Driver Not Loaded"))
    with pytest.raises(InputError, match=r"local: no NVIDIA driver found \(NVML: Driver Not Loaded\)"):
        parse_gpu_set("local")


def test_local_with_no_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([]))
    with pytest.raises(InputError, match="no GPUs"):
        hardware.detect_local()


def test_local_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(InputError, match="no NVIDIA driver found.*pynvml is not installed"):
        hardware.detect_local()


def test_local_unknown_device_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([("NVIDIA RTX A6000", 48 * GiB, 40 * GiB)]))
    with pytest.raises(InputError, match="'NVIDIA RTX A6000', which has no hardware profile"):
        hardware.detect_local()


def test_local_on_this_machine():
    """With the real pynvml: a GPU-less CI machine must answer with the no-driver error."""
    try:
        s = hardware.detect_local()
    except InputError as e:
        assert "no NVIDIA driver" in str(e)
    else:
        assert s.count >= 1 and all(d.free_bytes is not None for d in s.devices)


# --- import weight ------------------------------------------------------------------------------


def test_import_hardware_is_light():
    probe = ("import sys, json\nimport planner.hardware as h\nh.profiles(); h.parse_gpu_set('2x4090+1x3090')\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'triton', 'textual', 'numpy', 'pynvml'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
