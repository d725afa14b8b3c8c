"""The benchmark's CLI on a machine without CUDA, and the import-time promise of ``kernels``."""

import os
import subprocess
import sys

import pytest
import torch

from kernels import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_roofline(capsys):
    assert bench.main(["--dry-run", "--shapes", "4096x4096,32768x8192", "--batches", "1,256"]) == 0
    out = capsys.readouterr().out
    assert "roofline" in out and "4096x4096" in out and "(c)" in out


def test_roofline_numbers():
    rows = bench.roofline_rows([(4096, 4096)], [1], ["int4-g128"], 3.35e12, 989.4e12)
    fp16, int4 = rows
    assert fp16["bytes"] == 2 * 4096 * 4096 + 2 * 4096 + 2 * 4096
    assert int4["bytes"] == 4096 * 4096 // 2 + 2 * 4096 * 32 + 2 * 4096 + 2 * 4096
    assert fp16["flops"] == 2 * 4096 * 4096
    assert abs(fp16["floor_us"] - fp16["bytes"] / 3.35e12 * 1e6) < 1e-9


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_no_cuda_exits_2_with_one_line():
    r = _run("-m", "kernels.bench", "--batches", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and r.stdout == ""


@pytest.mark.parametrize("argv", [["--shapes", "4096"], ["--batches", "0"], ["--batches", "a"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        bench.build_parser().parse_args(argv)
    assert e.value.code == 2


def test_bad_format_exits_2(capsys):
    assert bench.main(["--dry-run", "--formats", "int5"]) == 2
    assert "unknown weight format" in capsys.readouterr().err


def test_import_kernels_does_not_import_triton():
    code = "import sys, kernels; print('triton' in sys.modules)"
    r = _run("-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
