"""Helpers for the TUI tests (a plain module: no conftest.py in this folder)."""

from __future__ import annotations

import asyncio
import os

SNAPSHOT_ARGS = {"model": "glm-130b", "gpus": "4x3090"}
"""The snapshot scene: GLM-130B on 4 × RTX 3090, every other input at its default."""


def make_app(**kw):
    from planner.tui.app import PlannerApp

    args = {"model": "", "gpus": "4x3090"}
    args.update(kw)
    return PlannerApp(**args)


def _breakpoints_applied(app) -> bool:
    """The screen's size classes (-wide, -tall) follow a Resize event that can arrive after the
    first frame: a snapshot taken before it would show the narrow layout at 160 columns."""
    w, h = app.size
    for points, value in ((app.HORIZONTAL_BREAKPOINTS, w), (app.VERTICAL_BREAKPOINTS, h)):
        want = [c for at, c in points if at <= value][-1:] if points else []
        if want and not app.screen.has_class(want[0]):
            return False
    return True


def _tables_measured(app) -> bool:
    """DataTable sizes its columns on its next Idle event after rows change; a snapshot taken
    before that shows other column widths (private fields: no public "measured" flag exists)."""
    from textual.widgets import DataTable

    return all(not t._require_update_dimensions and not t._updated_cells
               for t in app.query(DataTable))


async def settle(app, pilot, timeout: float = 20.0) -> None:
    """Wait until no worker is pending or running, their results are on the screen and the
    screen's size classes are set."""
    from textual.worker import WorkerState

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        await pilot.pause()
        busy = [w for w in app.workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING)]
        if not busy and not app.busy and _breakpoints_applied(app) and _tables_measured(app):
            await pilot.pause()
            if not app.busy and _tables_measured(app) and not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                                        for w in app.workers):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the TUI did not settle")


async def set_input(app, pilot, wid: str, text: str, keys: bool = True) -> None:
    """Clear an input and type ``text`` into it key by key, as a user would (``keys=False``:
    paste it whole; Pilot takes ~0.15 s a key, too slow for long paths)."""
    from textual.widgets import Input

    inp = app.query_one(f"#{wid}", Input)
    inp.focus()
    inp.value = ""
    await pilot.pause()
    if keys:
        await pilot.press(*list(text))
    else:
        inp.insert_text_at_cursor(text)
    await settle(app, pilot)


def run(coro):
    """Run a test's coroutine (no pytest-asyncio needed) and return its value."""
    return asyncio.run(coro)


def svg_to_png(svg_path: str, png_path: str) -> None:
    """Render a snapshot SVG for a human to look at (needs cairosvg)."""
    import cairosvg

    cairosvg.svg2png(url=os.fspath(svg_path), write_to=os.fspath(png_path))
