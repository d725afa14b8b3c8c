"""Hostile inputs through the CLI (issue 14): odd paths, signals, edited plans, oversized requests.

Every case runs ``python -m planner`` in a subprocess under a timeout, so a hang fails the test
instead of stalling the suite, and asserts the exit code, one ``planner: error:`` line on stderr,
no traceback, and that nothing but the intended file changed.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from planner_testutil import REPO

TIMEOUT = 60


def cli(*args: str, cwd: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], err[-2000:])
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("planner: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict:
    """A folder of odd paths: a FIFO, a socket, a symlink loop, a dangling link, a link to a FIFO,
    an unreadable file and folder, and a good plan file."""
    d = tmp_path_factory.mktemp("odd")
    paths = {"dir": str(d)}
    os.mkfifo(d / "fifo")
    paths["fifo"] = str(d / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    paths["sock"] = str(d / "sock")
    os.symlink("loop_b", d / "loop_a")
    os.symlink("loop_a", d / "loop_b")
    paths["loop"] = str(d / "loop_a")
    os.symlink("absent", d / "dangling")
    paths["dangling"] = str(d / "dangling")
    os.symlink("fifo", d / "to_fifo")
    paths["to_fifo"] = str(d / "to_fifo")
    (d / "locked").mkdir()
    (d / "locked" / "config.json").write_text("{}")
    os.chmod(d / "locked", 0)
    paths["locked"] = str(d / "locked")
    (d / "secret.yaml").write_text("x: 1\n")
    os.chmod(d / "secret.yaml", 0)
    paths["secret"] = str(d / "secret.yaml")
    (d / "fifo_cfg").mkdir()
    os.mkfifo(d / "fifo_cfg" / "config.json")
    paths["fifo_cfg"] = str(d / "fifo_cfg")
    plan = str(d / "plan.yaml")
    proc = cli("recommend", "--model", "smollm2-135m", "--gpus", "cpu:1", "--context", "256",
               "-o", plan)
    assert proc.returncode == 0, proc.stderr
    paths["plan"] = plan
    yield paths
    os.chmod(d / "locked", 0o755)
    os.chmod(d / "secret.yaml", 0o644)
    s.close()


ROOT = os.geteuid() == 0
needs_non_root = pytest.mark.skipif(ROOT, reason="root reads any file: permission cases need a user")

# -- 1. paths: stat first, one line, never a hang ------------------------------------------------

KINDS = [("fifo", "is a FIFO"), ("sock", "is a socket"), ("loop", "symlink loop"),
         ("dangling", "dangling symlink"), ("to_fifo", "is a FIFO"), ("dir", "is a folder")]


@pytest.mark.parametrize("key,says", KINDS)
@pytest.mark.parametrize("command", [
    ["export", "{p}", "--engine", "vllm"],
    ["launch", "{p}"],
    ["launch", "{p}", "--dry-run"],
])
def test_plan_path_is_odd(odd, key, says, command):
    proc = cli(*[a.format(p=odd[key]) for a in command])
    one_line_error(proc, 2, odd[key], says)


def test_device_node_as_plan(odd):
    one_line_error(cli("export", "/dev/zero", "--engine", "vllm"), 2, "is a character device")
    one_line_error(cli("launch", "/dev/null", "--dry-run"), 2, "is a character device")


@pytest.mark.parametrize("key,says", [k for k in KINDS if k[0] != "dir"])
@pytest.mark.parametrize("command", [["inspect", "{p}"], ["estimate", "--model", "{p}"],
                                     ["recommend", "--model", "{p}", "--gpus", "1x4090"]])
def test_model_path_is_odd(odd, key, says, command):
    line = one_line_error(cli(*[a.format(p=odd[key]) for a in command]), 2, says)
    assert "did you mean" not in line


def test_folder_whose_config_is_a_fifo(odd):
    one_line_error(cli("estimate", "--model", odd["fifo_cfg"]), 2, "config.json", "is a FIFO")
    one_line_error(cli("inspect", odd["fifo_cfg"]), 2, "config.json", "is a FIFO")


def test_folder_with_a_fifo_shard(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    os.mkfifo(tmp_path / "model-00001-of-00002.safetensors")
    for cmd in (["inspect", str(tmp_path)], ["estimate", "--model", str(tmp_path)]):
        one_line_error(cli(*cmd), 2, "model-00001-of-00002.safetensors", "is a FIFO")


@pytest.mark.parametrize("flag", ["--checkpoint", "--eval-text", "--tokenizer"])
@pytest.mark.parametrize("key", ["fifo", "sock", "loop"])
def test_launch_input_flags_checked_in_the_parent(odd, flag, key):
    # the parent refuses before torchrun or a rank could open (and block on) the path
    args = ["launch", odd["plan"], flag, odd[key]] + (["--eval"] if flag != "--checkpoint" else [])
    one_line_error(cli(*args), 2, odd[key])
    one_line_error(cli(*args, "--dry-run"), 2, odd[key])


@pytest.mark.parametrize("key", ["fifo", "loop", "dir"])
def test_launch_report_must_be_a_regular_file(odd, key):
    one_line_error(cli("launch", odd["plan"], "--report", odd[key], "--dry-run"), 2, odd[key])


def test_quality_from_odd(odd):
    one_line_error(cli("recommend", "--model", "smollm2-135m", "--gpus", "1x4090",
                       "--quality-from", odd["fifo"]), 2, "is a FIFO")


@needs_non_root
def test_unreadable_folder_and_file(odd):
    one_line_error(cli("inspect", odd["locked"]), 2, "permission denied")
    one_line_error(cli("estimate", "--model", odd["locked"]), 2, "permission denied")
    one_line_error(cli("export", odd["secret"], "--engine", "vllm"), 2, "permission denied")


def test_paths_helper_classifies(odd):
    from planner.errors import InputError
    from planner.paths import check_input, read_bytes

    for key, says in KINDS:
        with pytest.raises(InputError, match=says):
            read_bytes(odd[key], 1 << 20)
    with pytest.raises(InputError, match="no such file"):
        check_input(os.path.join(odd["dir"], "absent"))
    with pytest.raises(InputError, match="not a folder"):
        check_input(os.path.join(odd["plan"], "inner"))
    assert check_input(odd["dir"], "folder")


# -- 2. -o PATH --force replaces only a regular file --------------------------------------------

@pytest.mark.parametrize("key", ["fifo", "sock", "loop", "dangling", "to_fifo"])
def test_force_never_replaces_a_non_regular_file(odd, key):
    before = os.lstat(odd[key])
    proc = cli("recommend", "--model", "smollm2-135m", "--gpus", "1x4090", "-o", odd[key],
               "--force")
    one_line_error(proc, 2, odd[key], "refusing to replace")
    after = os.lstat(odd[key])
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert after.st_ino == before.st_ino
    assert not [n for n in os.listdir(odd["dir"]) if n.endswith(".tmp")]


def test_force_never_replaces_a_device(tmp_path):
    # a symlink to a device is refused as a symlink, and the device itself as a device
    os.symlink("/dev/null", tmp_path / "null")
    one_line_error(cli("recommend", "--model", "smollm2-135m", "--gpus", "1x4090", "-o",
                       str(tmp_path / "null"), "--force"), 2, "is a symlink")
    one_line_error(cli("recommend", "--model", "smollm2-135m", "--gpus", "1x4090", "-o",
                       "/dev/null", "--force"), 2, "is a character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_force_replaces_a_regular_file_atomically(tmp_path):
    out = tmp_path / "plan.yaml"
    out.write_text("old\n")
    ino = os.stat(out).st_ino
    proc = cli("recommend", "--model", "smollm2-135m", "--gpus", "1x4090", "-o", str(out))
    one_line_error(proc, 2, "exists", "--force")
    assert out.read_text() == "old\n"
    proc = cli("recommend", "--model", "smollm2-135m", "--gpus", "1x4090", "-o", str(out),
               "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("schema: planner.plan/v1")
    assert os.stat(out).st_ino != ino  # renamed over, not rewritten in place
    assert sorted(os.listdir(tmp_path)) == ["plan.yaml"]


# -- 3. processes: a signal to the planner stops its whole process group -----------------------

_CHILD = """
import os, subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {kid.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""

_DRIVER = """
import sys
import planner.launch as L
child, pids = sys.argv[1], sys.argv[2]
L.build_command = lambda plan, ranks, extra: [sys.executable, "-c", child, pids]
L.require_runtime = lambda *a, **k: None  # a fake rank (a python sleep) stands in for torchrun
from planner.cli import main
sys.exit(main(["launch", sys.argv[3]]))
"""


_DRIVER_QUALITY = """
import subprocess, sys
import planner.launch as L
child, pids = sys.argv[1], sys.argv[2]
real = subprocess.Popen
L.subprocess.Popen = lambda cmd, **kw: real([sys.executable, "-c", child, pids], **kw)
L.require_runtime = lambda *a, **k: None  # the fake rank stands in for python -m runtime.eval
from planner.cli import main
sys.exit(main(["quality", "--model", sys.argv[3], "--weights", "fp16"]))
"""


def test_sigterm_to_quality_leaves_no_process(tmp_path):
    cfg = tmp_path / "config.json"
    src = os.path.join(REPO, "planner", "catalog", "configs")
    cfg.write_text(open(os.path.join(src, sorted(os.listdir(src))[0])).read())
    rc, err = _signal_driver(_DRIVER_QUALITY, str(cfg), tmp_path, signal.SIGTERM)
    assert rc == 143 and err.strip() == "planner: stopped by SIGTERM", err


def _signal_driver(driver: str, arg: str, tmp_path, sig) -> tuple[int, str]:
    """Run ``driver`` (its fake children write their pids to a file), send ``sig`` once they run,
    and return the exit status and stderr, after asserting no child outlived the planner."""
    pids_file = str(tmp_path / "pids")
    proc = subprocess.Popen([sys.executable, "-c", driver, _CHILD, pids_file, arg],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(pids_file):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the fake child never started"
            time.sleep(0.05)
        pids = [int(x) for x in open(pids_file).read().split()]
        assert all(_alive(p) for p in pids)
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "a process of the group outlived the planner"
    return rc, err


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig,code,says", [(signal.SIGTERM, 143, "planner: stopped by SIGTERM"),
                                           (signal.SIGHUP, 129, "planner: stopped by SIGHUP"),
                                           (signal.SIGINT, 130, "planner: interrupted")])
def test_signal_to_launch_leaves_no_process(odd, tmp_path, sig, code, says):
    rc, err = _signal_driver(_DRIVER, odd["plan"], tmp_path, sig)
    assert rc == code, err
    assert err.strip() == says, err


def test_run_group_timeout_kills_the_group(tmp_path):
    from planner.launch import run_group

    pids_file = str(tmp_path / "pids")
    t0 = time.monotonic()
    assert run_group([sys.executable, "-c", _CHILD, pids_file], timeout=2) == 124
    assert time.monotonic() - t0 < 30
    pids = [int(x) for x in open(pids_file).read().split()]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


# -- 4. plan integrity -----------------------------------------------------------------------

def _rehashed(src: str, dst: str, edit) -> str:
    import yaml

    from planner.plan import dump_plan, plan_hash

    with open(src, encoding="utf-8") as fh:
        d = yaml.safe_load(fh)
    edit(d)
    d["hash"] = plan_hash(d)
    with open(dst, "w", encoding="utf-8") as fh:
        fh.write(dump_plan(d))
    return dst


@pytest.mark.parametrize("command", [["launch", "{p}"], ["launch", "{p}", "--dry-run"],
                                     ["export", "{p}", "--engine", "vllm"]])
def test_edited_and_rehashed_plan_refused(odd, tmp_path, command):
    def edit(d):  # a stale prediction: the workload grew 64x, the figures did not
        d["workload"]["batch"] *= 64
    path = _rehashed(odd["plan"], str(tmp_path / "edited.yaml"), edit)
    line = one_line_error(cli(*[a.format(p=path) for a in command]), 2,
                          "prediction.ranks[0].bytes.kv_cache", "recomputed")
    assert "--no-verify" not in line


def test_no_verify_trusts_the_edited_plan_and_reaches_the_ranks(odd, tmp_path):
    path = _rehashed(odd["plan"], str(tmp_path / "edited.yaml"),
                     lambda d: d["workload"].update(batch=d["workload"]["batch"] * 64))
    proc = cli("launch", path, "--no-verify", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "--no-verify" in proc.stdout  # the runtime's own load skips the same checks


def test_hash_error_offers_no_missing_flag(odd, tmp_path):
    import yaml

    from planner.plan import dump_plan

    with open(odd["plan"], encoding="utf-8") as fh:
        d = yaml.safe_load(fh)
    d["prediction"]["ranks"][0]["bytes"]["total"] = 1
    path = tmp_path / "edited.yaml"
    path.write_text(dump_plan(d))
    line = one_line_error(cli("launch", str(path), "--dry-run"), 2, "field hash")
    assert "--no-verify" not in line and "verification" not in line


def test_runtime_free_check_without_nvml_needs_force(monkeypatch):
    torch = pytest.importorskip("torch")
    import types

    import runtime.cli as rc
    import runtime.measure as rm

    monkeypatch.setattr(rm, "nvml_free_bytes", lambda index: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (_ for _ in ()).throw(
        RuntimeError("no CUDA driver")))
    plan = types.SimpleNamespace(ranks=[{"bytes": {"total": 10 << 30}}])
    with pytest.raises(rc.Fail, match="cannot check the free memory on GPU 0.*--force") as ei:
        rc._check_free(plan, 0, torch.device("cuda", 0), False)
    assert ei.value.code == 1
    assert rc._check_free(plan, 0, torch.device("cuda", 0), True)["free_bytes"] == 0
    monkeypatch.setattr(rm, "meminfo_available_bytes", lambda: 0)
    with pytest.raises(rc.Fail, match="cannot check the available host RAM"):
        rc._check_free(plan, 0, torch.device("cpu"), False)


# -- 5. messages and caps --------------------------------------------------------------------

def test_prompt_longer_than_context():
    for cmd in (["estimate", "--model", "llama-3-8b"],
                ["recommend", "--model", "llama-3-8b", "--gpus", "1x3090"]):
        line = one_line_error(cli(*cmd, "--context", "4k", "--prompt-tokens", "5000"), 2,
                              "--prompt-tokens 5000 exceeds --context 4096")
        assert "-904" not in line


def test_cpu_shortfall_does_not_say_gpu():
    line = one_line_error(cli("recommend", "--model", "llama-3.1-405b", "--gpus", "cpu:1"), 1,
                          "for one CPU rank")
    assert "GPU" not in line.split("closest:")[1]


@pytest.mark.parametrize("args,says", [(["--nodes", "0"], "--nodes must be at least 1"),
                                       (["--timeout", "-1"], "--timeout must be")])
def test_launch_bad_numbers(odd, args, says):
    one_line_error(cli("launch", odd["plan"], *args), 2, says)


def test_cpu_ranks_beyond_cores(tmp_path):
    from planner.launch import _device_count

    cores = _device_count("cpu")[0]
    n = cores + 1
    out = str(tmp_path / "cpu.yaml")
    proc = cli("recommend", "--model", "smollm2", "--gpus", f"cpu:{n}", "--tp", str(n),
               "--context", "256", "-o", out)
    if proc.returncode != 0:  # TP n may not divide the model's heads: PP n then
        proc = cli("recommend", "--model", "smollm2", "--gpus", f"cpu:{n}", "--pp", str(n),
                   "--context", "256", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert f"plans {n} CPU ranks but this host has {cores} core(s)" in proc.stderr
    one_line_error(cli("launch", out, "--dry-run"), 2, f"this host has {cores} CPU core(s)",
                   "--force runs them oversubscribed")
    proc = cli("launch", out, "--dry-run", "--force")
    assert proc.returncode == 0 and "oversubscribed" in proc.stderr, proc.stderr


def test_huge_gpu_set_refused_fast():
    t0 = time.monotonic()
    one_line_error(cli("recommend", "--model", "llama-3-8b", "--gpus", "4096x3090"), 2,
                   "implausibly large", "at most 1024")
    one_line_error(cli("recommend", "--model", "llama-3-8b", "--gpus", "1000x3090+100x4090"), 2,
                   "implausibly large")
    assert time.monotonic() - t0 < 30


def test_search_layouts_are_capped():
    from planner.hardware import parse_gpu_set
    from planner.memory import Workload
    from planner.search import MAX_LAYOUT_GPUS, layouts, make_problem
    from planner.sources import resolve

    p = make_problem(resolve("llama-3-8b").spec, parse_gpu_set("1024x3090"), Workload(1, 128, 0),
                     "runtime")
    pairs = layouts(p)
    assert max(t * q for t, q in pairs) <= MAX_LAYOUT_GPUS
    assert max(q for _, q in pairs) <= p.spec.layers


def test_sweep_size_capped():
    batches = ",".join(str(i) for i in range(1, 2001))
    t0 = time.monotonic()
    one_line_error(cli("sweep", "--model", "llama-3-8b", "--batch", batches), 2, "cells",
                   "more than the 1,024")
    assert time.monotonic() - t0 < 30


def test_unreadable_folder_in_process(tmp_path, monkeypatch, capsys):
    """As root every folder reads; the permission checks are driven through os.access instead."""
    from planner.cli import main

    (tmp_path / "config.json").write_text("{}")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(tmp_path)
                        else real(p, m, **k))
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "permission denied" in err and "Traceback" not in err
    assert main(["estimate", "--model", str(tmp_path)]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_oserror_past_the_checks_is_one_line(tmp_path, monkeypatch, capsys):
    import planner.inspect
    from planner.cli import main

    def boom(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(planner.inspect, "inspect_path", boom)
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"planner: error: {tmp_path}: Permission denied\n"
