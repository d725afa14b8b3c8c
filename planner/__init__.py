"""planner: an LLM-inference memory planner and capacity calculator.

Pure Python: importing it loads no torch, triton or textual (tests/test_import_light.py proves it).
"""

__version__ = "0.1.0"
