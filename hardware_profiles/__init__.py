"""GPU hardware profiles: one YAML file per GPU, shipped inside the wheel as package data.

Each file holds a canonical name, aliases (NVML device names among them), memory as NVML reports its
total, memory bandwidth, dense tensor throughput per format, compute capability, interconnect and a
public hourly price, with a ``sources`` entry citing every number. ``planner.hardware`` loads them;
this package only tells it where they are and imports nothing.
"""

import os

DIR = os.path.dirname(os.path.abspath(__file__))
"""The folder holding the ``*.yaml`` profiles."""
