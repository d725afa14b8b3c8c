"""The light install: the wheel plus its declared base requirements, in a fresh venv without torch.

Builds the wheel from this checkout, creates a venv without pip (the outer pip installs into it with
``--python``, reusing pip's cache), installs the wheel and its base ``Requires-Dist`` lines with
``--no-deps``, and runs ``planner recommend --gpus 4x3090`` from outside the repository. Needs PyPI
(or pip's cache) for pyyaml, textual and nvidia-ml-py: CI has it. Runs in the default suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import pytest

from planner_testutil import REPO

pytestmark = pytest.mark.install


CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
"""No PYTHONPATH: a checkout on it would make pip see planner as installed already."""


def _run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 300)
    kw.setdefault("env", CLEAN_ENV)
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def _base_requirements(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("light")
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                "-w", str(tmp / "dist"), REPO])
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = str(next((tmp / "dist").glob("planner-*.whl")))
    reqs = _base_requirements(wheel)
    venv = tmp / "venv"
    out = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert out.returncode == 0, out.stderr
    py = str(venv / "bin" / "python")
    out = _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps",
                "--timeout", "60", wheel, *reqs])
    assert out.returncode == 0, out.stderr[-2000:]
    assert (venv / "bin" / "planner").exists(), out.stdout
    return venv, reqs, CLEAN_ENV, tmp


def test_base_requirements_have_no_torch_triton_or_cuda(light_venv):
    _, reqs, _, _ = light_venv
    names = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower() for r in reqs}
    assert names == {"pyyaml", "textual", "nvidia-ml-py"}, names


def test_light_venv_holds_no_torch_and_recommends(light_venv):
    venv, _, env, tmp = light_venv
    site = next((venv / "lib").glob("python*/site-packages"))
    installed = {p.name.lower() for p in site.iterdir()}
    heavy = {n for n in installed if n.split("-")[0] in ("torch", "triton", "numpy")
             or (n.startswith("nvidia") and not n.startswith("nvidia_ml_py"))}
    assert heavy == set(), heavy
    out = _run([str(venv / "bin" / "planner"), "recommend", "--gpus", "4x3090"], cwd=tmp,
               env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 x RTX 3090" in out.stdout and "GLM-130B" in out.stdout
    assert "Traceback" not in out.stderr


def test_light_venv_launch_names_the_runtime_extra(light_venv):
    venv, _, env, tmp = light_venv
    plan = tmp / "gpt2.yaml"
    out = _run([str(venv / "bin" / "planner"), "recommend", "--gpus", "cpu", "--model", "gpt2",
                "--prompt-tokens", "16", "--new-tokens", "4", "-o", str(plan)], cwd=tmp, env=env,
               timeout=120)
    assert out.returncode == 0, out.stderr
    for argv in (["launch", str(plan)], ["quality", "--model", "gpt2"]):
        out = _run([str(venv / "bin" / "planner"), *argv], cwd=tmp, env=env, timeout=120)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("planner: "), out.stderr
        assert "planner[runtime]" in lines[0], out.stderr
