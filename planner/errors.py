"""One error hierarchy for the planner. The CLI renders each as one line on stderr."""

from __future__ import annotations

import difflib


class PlannerError(Exception):
    """Base class: a message meant for the user, and the process exit code."""

    exit_code = 2


class InputError(PlannerError):
    """Bad input from the user (a flag, a name, a file): exit 2."""

    exit_code = 2


class InfeasibleError(PlannerError):
    """The input is valid but the layout cannot work (TP does not divide heads, group size): exit 2."""

    exit_code = 2


class DoesNotFit(PlannerError):
    """Nothing fits the memory available: exit 1."""

    exit_code = 1


def suggest(word: str, choices: list[str], n: int = 3) -> str:
    """A "; did you mean …?" suffix with the nearest choices, or an empty string."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    if not close:
        close = [c for lc, c in lowered.items() if word.lower() in lc][:n]
    else:
        close = [lowered[c] for c in close]
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def lookup(table: dict, key: str, what: str):
    """``table[key]`` for a key as typed (stripped, lower case), or one InputError line naming
    what was asked for, the nearest keys and every known one."""
    k = str(key).strip().lower()
    if k in table:
        return table[k]
    raise InputError(f"unknown {what} {key!r}{suggest(k, list(table))}; known: {', '.join(table)}")
