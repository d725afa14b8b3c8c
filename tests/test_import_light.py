"""`import planner` (and the estimate path) must not load torch, triton or textual."""

import json
import subprocess
import sys

from planner_testutil import REPO

HEAVY = ("torch", "triton", "textual", "numpy", "safetensors", "gguf")


def loaded_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_planner_is_light():
    assert loaded_after("import planner") == []


def test_estimate_and_inspect_paths_are_light():
    code = ("import planner.cli, planner.memory, planner.sources, planner.inspect, "
            "planner.checkpoint, planner.catalog\n"
            "from planner.memory import estimate\n"
            "estimate(planner.catalog.lookup('glm-130b').spec, 'int4', 'fp16', 4)")
    assert loaded_after(code) == []
