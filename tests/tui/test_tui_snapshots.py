"""Snapshots of the main screen (pytest-textual-snapshot): GLM-130B on 4 × RTX 3090.

Review a changed snapshot by eye before accepting it (pytest --snapshot-update); the README of
tests/tui says how to render one to PNG.
"""

from __future__ import annotations

from tui_testutil import SNAPSHOT_ARGS, make_app, settle


def _app():
    return make_app(**SNAPSHOT_ARGS)


def _settled(app):
    async def run_before(pilot) -> None:
        await settle(app, pilot)
    return run_before


def test_main_screen_80x24(snap_compare):
    app = _app()
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settled(app))


def test_main_screen_160x48(snap_compare):
    app = _app()
    assert snap_compare(app, terminal_size=(160, 48), run_before=_settled(app))
