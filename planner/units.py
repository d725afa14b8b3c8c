"""Unit conversion for printing and parsing. Bytes are ints inside; binary units (KiB, MiB, GiB =
2^10, 2^20, 2^30) when printed. Token counts are parsed here (binary suffixes: 4k = 4096)."""

from __future__ import annotations

import re

from planner.errors import InputError

_BINARY = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]


def fmt_bytes(n: int) -> str:
    """Human-readable binary size: 1536 -> '1.50 KiB'."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in _BINARY:
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{n} B"


def fmt_count(n: int) -> str:
    """Parameter counts: 6738415616 -> '6.74 B'."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def as_int(v: object) -> int | None:
    """A JSON value read as an integer: an int (not a bool) or an integral float (``4096.0``, as
    some configs and indexes write them); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


_TOKEN_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20}
"""Token counts are binary, as context lengths are: 4k = 4096, 128k = 131072, 1m = 1048576."""


def parse_tokens(text: str, what: str, minimum: int = 1) -> int:
    """A token or sequence count: '2048', '4k' (= 4096), '32K', '1m' (= 2^20). Rejects zero,
    negatives, fractions and junk."""
    s = str(text).strip().lower().replace("_", "")
    m = re.fullmatch(r"([0-9]+)([km]?)", s)
    if not m:
        raise InputError(f"{what} must be a whole number (like 2048, 4k or 1m), got {text!r}")
    value = int(m.group(1)) * _TOKEN_SUFFIX[m.group(2)]
    if value < minimum:
        raise InputError(f"{what} must be at least {minimum}, got {text!r}")
    if value > 1 << 40:
        raise InputError(f"{what} {text!r} is implausibly large")
    return value


_BYTE_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
"""Byte sizes as written: binary units (GiB = 2^30) and decimal ones (GB = 10^9) are different."""


def parse_bytes(text: str, what: str) -> int:
    """A byte size with its unit: '1GiB' (2^30), '512MiB', '24GB' (24 x 10^9), '0'. A bare number
    other than 0 is refused: GB or GiB must be said."""
    s = str(text).strip().lower().replace("_", "").replace(" ", "")
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-z]*)", s)
    if not m or (m.group(2) not in _BYTE_UNITS and not (m.group(2) == "" and
                                                        float(m.group(1)) == 0)):
        raise InputError(f"{what} must be a size with its unit (like 1GiB, 512MiB or 24GB), got "
                         f"{text!r}")
    value = int(float(m.group(1)) * _BYTE_UNITS.get(m.group(2), 1))
    if value > 1 << 60:
        raise InputError(f"{what} {text!r} is implausibly large")
    return value


def tokens_arg(what: str, minimum: int = 1):
    """An argparse ``type=`` for a token count (``parse_tokens``); errors name the flag."""
    import argparse

    def parse(text: str) -> int:
        try:
            return parse_tokens(text, what, minimum)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = what
    return parse


def seconds_arg(what: str):
    """An argparse ``type=`` for a time limit in seconds: a finite number >= 0 (0 = no limit)."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number of seconds, got "
                                             f"{text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{what} must be a finite number of seconds >= 0 "
                                             f"(0 = no limit), got {text!r}")
        return value
    parse.__name__ = what
    return parse
