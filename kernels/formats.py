"""Format keys as the kernels understand them, and each format's exact byte formula.

The keys are the precision registry's keys (``planner/precision.py``); ``kernels`` does not import
``planner`` (it depends on nothing of the project), so the key grammar and the byte arithmetic are
restated here and a test (``tests/kernels/test_layout.py``) proves both agree with the registry for
every key and many shapes.

``N`` is a linear's output dimension (rows of ``W``), ``K`` its input dimension (columns), ``G = K / g``
the number of groups per row for group-wise formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GROUP_KEY = re.compile(r"^int4-g([1-9][0-9]*)(-zp)?$")
FIXED_KEYS = ("fp32", "fp16", "bf16", "fp8", "int8", "llm-int8", "int4", "nf4", "absmax")
NF4_BLOCK = 64
"""Elements per NF4 block (bitsandbytes' default ``blocksize=64``)."""
NF4_NESTED_BLOCK = 256
"""First-level absmax values per second-level fp32 scale (bitsandbytes' double quantization)."""


@dataclass(frozen=True)
class Format:
    """A parsed format key."""

    key: str
    """The registry key, lower-cased (``int4-g128-zp``)."""
    kind: str
    """``float`` (fp32/fp16/bf16), ``int8``, ``llm-int8``, ``absmax``, ``fp8``, ``int4`` (per-channel
    and group-wise, symmetric or with zero points) or ``nf4``."""
    group: int = 0
    """Elements per scale along K for ``int4-gN``; 0 for per-channel / other formats."""
    zero_point: bool = False
    """True for ``int4-gN-zp``."""

    def check_shape(self, n: int, k: int) -> None:
        """Raise ValueError naming the constraint if an [n, k] weight cannot use this format."""
        if n < 1 or k < 1:
            raise ValueError(f"{self.key}: weight shape must be positive, got [{n}, {k}]")
        if self.group and k % self.group:
            raise ValueError(f"{self.key}: the input dimension K={k} must be a multiple of the "
                             f"group size {self.group}")

    def nbytes(self, n: int, k: int) -> int:
        """Exact bytes of an [n, k] weight in this format (the registry's formula)."""
        e = n * k
        if self.kind == "float":
            return e * {"fp32": 4, "fp16": 2, "bf16": 2}[self.key]
        if self.kind in ("int8", "llm-int8", "fp8"):
            return e + n * (2 if self.kind == "int8" else 4)
        if self.kind == "absmax":
            return e + 4
        payload = -(-e // 2)
        if self.kind == "nf4":
            blocks = -(-e // NF4_BLOCK)
            return payload + blocks + 4 * -(-blocks // NF4_NESTED_BLOCK) + 4
        groups = k // self.group if self.group else 1
        zeros = -(-(n * groups) // 2) if self.zero_point else 0
        return payload + 2 * n * groups + zeros


def parse_key(key: str) -> Format:
    """Parse a registry key; ValueError (with the known keys) for anything else."""
    if not isinstance(key, str):
        raise ValueError(f"format key must be a string, got {type(key).__name__}")
    k = key.strip().lower()
    if k in ("fp32", "fp16", "bf16"):
        return Format(k, "float")
    if k in FIXED_KEYS:
        return Format(k, k if k != "int4" else "int4")
    m = _GROUP_KEY.match(k)
    if m:
        return Format(k, "int4", group=int(m.group(1)), zero_point=bool(m.group(2)))
    raise ValueError(f"unknown weight format {key!r}; known: {', '.join(FIXED_KEYS)}, "
                     "int4-gN and int4-gN-zp (N = group size along the input dimension)")
