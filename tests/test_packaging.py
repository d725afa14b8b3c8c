"""`pip install .` (not only editable) must ship the catalog YAML."""

import os
import subprocess
import sys
import zipfile

from planner_testutil import REPO


def test_wheel_ships_catalog_yaml(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path), REPO], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    catalog = {n for n in names if n.startswith("planner/catalog/") and n.endswith(".yaml")}
    expected = {f"planner/catalog/{f}" for f in os.listdir(os.path.join(REPO, "planner", "catalog"))
                if f.endswith(".yaml")}
    assert catalog == expected and len(catalog) >= 10
    assert "planner/cli.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
