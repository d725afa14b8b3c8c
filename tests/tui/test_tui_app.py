"""Pilot tests of `planner tui`: typed inputs, the plans table, the bars, saving, bad input."""

from __future__ import annotations

import json
import os

from textual.widgets import DataTable, Input, SelectionList, Static

from planner.memory import Workload, estimate
from planner.plan import load_plan
from planner.sources import resolve
from planner.units import fmt_bytes
from planner_testutil import run_cli
from tui_testutil import make_app, run, set_input, settle

SIZE = (100, 32)


def table_rows(app, wid: str = "#plans") -> list[list[str]]:
    table = app.query_one(wid, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def msg(app, name: str) -> Static:
    return app.query_one(f"#msg-{name}", Static)


def msg_text(app, name: str) -> str:
    return str(msg(app, name).render())


def test_type_gpus_pick_model_and_format_gives_recommends_plans():
    async def go():
        app = make_app(model="", gpus="")
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert "model" in app.last.errors and "gpus" in app.last.errors
            await set_input(app, pilot, "model", "glm-130b")
            await set_input(app, pilot, "gpus", "4x3090")
            # allow only int4 weights: untick the seven formats above it with the keyboard
            wl = app.query_one("#weights", SelectionList)
            wl.focus()
            await pilot.pause()
            assert wl.get_option_at_index(7).value == "int4"
            for _ in range(7):
                await pilot.press("space", "down")
            await settle(app, pilot)
            assert wl.selected == ["int4"]
            return table_rows(app), [c.label() for c in app.result.plans]

    rows, labels = run(go())
    out = run_cli("recommend", "--model", "glm-130b", "--gpus", "4x3090", "--weights", "int4",
                  "--json")
    assert out.returncode == 0, out.stderr
    want = [(p["precision"]["weights"], p["precision"]["kv_cache"], str(p["tp"]), str(p["pp"]))
            for p in json.loads(out.stdout)["plans"]]
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == want
    assert [r[0] for r in rows] == [str(i) for i in range(1, len(want) + 1)]
    assert labels[0] == "int4 · KV fp16 · TP 4 · PP 1"


def test_bars_equal_planner_estimate_and_follow_the_selection():
    async def go():  # the quality order: GLM-130B's paper layout first, then TP 2 x PP 2
        app = make_app(model="glm-130b", gpus="4x3090", objective="quality")
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            bars = app.query_one("#bars")
            shown = []
            for _ in range(2):
                c = app.selected
                shown.append((c.weights.key, c.kv.key, c.tp, c.pp, list(bars.rows),
                               "\n".join(t.plain for t in bars.render_lines_text(80))))
                app.query_one("#plans", DataTable).focus()
                await pilot.press("down")
                await settle(app, pilot)
            return shown

    spec = resolve("glm-130b").spec
    shown = run(go())
    for w, kv, tp, pp, rows, text in shown:
        est = estimate(spec, w, kv, tp, pp, Workload(1, 2048, 256), "runtime", "cuda")
        assert len(rows) == tp * pp == 4
        for row, r in zip(rows, est.ranks):
            for k in ("weights", "kv_cache", "activations", "overhead", "total"):
                assert row[k] == r.bytes()[k], (k, row, r.bytes())
            assert row["usable"] == 24 * 2**30
            assert fmt_bytes(r.weights) in text and fmt_bytes(r.kv_cache) in text
            assert f"{fmt_bytes(r.total)} / {fmt_bytes(24 * 2**30)}" in text
    # the second plan is TP 2 x PP 2: its stages differ, so the legend names GPU groups
    assert shown[1][2:4] == (2, 2) and "GPUs 0-1" in shown[1][5]


def test_save_writes_recommends_plan_file_and_asks_before_overwriting(tmp_path):
    path = tmp_path / "glm.plan.yaml"

    async def go():
        app = make_app(model="glm-130b", gpus="4x3090", objective="quality")
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("s")
            await pilot.pause()
            inp = app.screen.query_one("#path", Input)
            inp.value = str(path)
            await pilot.press("enter")
            await settle(app, pilot)
            assert path.exists()
            first = path.read_text()
            os.utime(path, (0, 0))
            # again: the overwrite prompt; "n" keeps the file
            await pilot.press("s")
            await pilot.pause()
            assert app.screen.query_one("#path", Input).value == str(path)
            await pilot.press("enter")
            await pilot.pause()
            assert "exists" in str(app.screen.query_one("Label").render())
            await pilot.press("n")
            await pilot.pause()
            assert os.stat(path).st_mtime == 0
            await pilot.press("s")
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause()
            await pilot.press("y")
            await settle(app, pilot)
            assert os.stat(path).st_mtime > 0
            # launch and export show commands for the saved file
            await pilot.press("l")
            await pilot.pause()
            launch = str(app.screen.query_one("#text-body", Static).render())
            await pilot.press("escape")
            await pilot.press("e")
            await pilot.pause()
            export = str(app.screen.query_one("#text-body", Static).render())
            await pilot.press("escape")
            return first, launch, export

    first, launch, export = run(go())
    plan = load_plan(str(path))
    assert (plan.weights, plan.kv_cache, plan.tp, plan.pp) == ("int4-g128-zp", "fp16", 4, 1)
    # the same document `planner recommend -o` writes (but for its creation time and hash)
    ref = tmp_path / "ref.yaml"
    out = run_cli("recommend", "--model", "glm-130b", "--gpus", "4x3090", "--objective",
                  "quality", "-o", str(ref))
    assert out.returncode == 0, out.stderr
    ours, theirs = load_plan(str(path)).doc, load_plan(str(ref)).doc
    for d in (ours, theirs):
        d.pop("created"), d.pop("hash")
    assert ours == theirs
    assert f"planner launch {path}" in launch
    from planner.export import export_command, render

    assert render(export_command(plan, "vllm")[0]) in export
    assert "# llama.cpp" in export


def test_bad_inputs_show_inline_messages_and_the_rest_keeps_working(tmp_path):
    garbage = tmp_path / "config.json"
    garbage.write_bytes(b"\x00\x01 not json")

    async def go():
        app = make_app(model="glm-130b", gpus="4x3090")
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            good = table_rows(app)
            seen = {}
            await set_input(app, pilot, "gpus", "4x3099")
            seen["gpus"] = (msg_text(app, "gpus"), msg(app, "gpus").has_class("error"))
            assert table_rows(app) == good  # the last valid plans stay
            assert "fix the field" in str(app.query_one("#summary", Static).render())
            await set_input(app, pilot, "gpus", "4x3090")
            assert not msg(app, "gpus").has_class("error")
            await set_input(app, pilot, "batch", "0")
            seen["batch"] = (msg_text(app, "batch"), msg(app, "batch").has_class("error"))
            await set_input(app, pilot, "batch", "2")
            assert not msg(app, "batch").has_class("error")
            assert app.result.problem.workload.batch == 2
            await set_input(app, pilot, "model", "/nonexistent/dir/config.json", keys=False)
            seen["missing"] = msg_text(app, "model")
            await set_input(app, pilot, "model", str(garbage), keys=False)
            seen["garbage"] = msg_text(app, "model")
            await set_input(app, pilot, "model", "llama-2-7b")
            assert not msg(app, "model").has_class("error")
            assert app.result.source.spec.name == "meta-llama/Llama-2-7b-hf"
            # keys still work: the help screen opens and closes
            app.query_one("#plans", DataTable).focus()
            await pilot.press("question_mark")
            await pilot.pause()
            assert "Keys" in str(app.screen.query_one("#text-body", Static).render())
            await pilot.press("escape")
            return seen

    seen = run(go())
    text, is_error = seen["gpus"]
    assert is_error and "unknown GPU '3099'" in text and "did you mean" in text
    text, is_error = seen["batch"]
    assert is_error and "batch must be at least 1" in text
    assert "/nonexistent/dir/config.json" in seen["missing"]
    assert str(garbage) in seen["garbage"]


def test_model_picker_and_engine_switch():
    async def go():
        app = make_app(model="", gpus="2x4090")
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("ctrl+o")
            await pilot.pause()
            await pilot.press(*"opt 13b")
            await pilot.press("enter")
            await settle(app, pilot)
            model = app.query_one("#model", Input).value
            engine = app.query_one("#engine")
            engine.value = "llama.cpp"
            await settle(app, pilot)
            weights = [o.value for o in app.query_one("#weights", SelectionList)._options]
            return model, weights, app.result

    model, weights, res = run(go())
    assert model == "facebook/opt-13b"
    assert weights[:2] == ["fp16", "q8_0"]
    assert res.ok and res.problem.engine.name == "llama.cpp"
    assert all(c.weights.key in weights for c in res.plans)


def test_gpu_suggester_completes_the_last_term():
    from planner.tui.app import GPUSuggester

    async def go():
        s = GPUSuggester()
        return [await s.get_suggestion(v) for v in ("4x30", "2x4090+1x30", "h10", "4x", "")]

    got = run(go())
    assert got[0] == "4x3090" and got[1] == "2x4090+1x3090"
    assert got[2] is not None and got[2].startswith("h10")
    assert got[3] is None and got[4] is None


def test_first_screen_without_nvml_shows_plans(tmp_path, monkeypatch):
    """No NVIDIA driver and nothing remembered: the TUI opens on a catalog model and 1x4090, and
    its first frame already holds plans (not an error about `local`)."""
    import planner.hardware
    from planner.errors import InputError
    from planner.tui import model as M

    def no_nvml():
        raise InputError("NVML is not available (no NVIDIA driver)")

    monkeypatch.setattr(planner.hardware, "detect_local", no_nvml)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    model, gpus = M.first_screen(None, None)
    assert (model, gpus) == (M.DEFAULT_MODEL, M.DEFAULT_GPUS)
    assert M.first_screen("glm-130b", None) == ("glm-130b", M.DEFAULT_GPUS)

    async def go():
        app = make_app(model=model, gpus=gpus, remember=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            assert app.last.ok and app.result.plans
            return table_rows(app)

    assert run(go())
    # what gave plans is remembered for the next start (planner tui only: remember=True)
    assert M.load_last() == {"model": model, "gpus": gpus}
    assert M.first_screen(None, None) == (model, gpus)


def test_remembered_state_that_is_not_usable_is_ignored(tmp_path, monkeypatch):
    from planner.tui import model as M

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = M.state_path()
    os.makedirs(os.path.dirname(path))
    for body in (b"{not json", b'["a"]', b'{"model": 3, "gpus": null}',
                 b'{"model": "x\\u0000y"}', b" " * (M.STATE_MAX_BYTES + 1)):
        with open(path, "wb") as f:
            f.write(body)
        assert M.load_last() == {}, body
    os.remove(path)
    os.mkfifo(path)  # never opened: a FIFO would block
    assert M.load_last() == {}


def test_plan_columns_are_dropped_by_priority_not_cut():
    """At 120 columns the plans table keeps max ctx and tok/s (dropping lower-priority columns),
    every kept column is whole, and the kept ones are the first of PLAN_PRIORITY."""
    from planner.tui.app import PLAN_COLUMNS, PLAN_PRIORITY, visible_columns

    async def go(size):
        app = make_app(model="glm-130b", gpus="4x3090")
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            t = app.query_one("#plans", DataTable)
            labels = [c.label.plain for c in t.columns.values()]
            used = sum(c.get_render_width(t) for c in t.columns.values())
            return labels, used, t.size.width

    for size in ((80, 24), (120, 40), (160, 48)):
        labels, used, width = run(go(size))
        assert used <= width, (size, used, width)
        assert set(labels) == set(PLAN_PRIORITY[:len(labels)]), (size, labels)
        assert labels == [l for l, _ in PLAN_COLUMNS if l in labels]
        if size[0] >= 120:
            assert "max ctx" in labels and "tok/s" in labels, labels
        if size[0] >= 160:
            assert len(labels) == len(PLAN_COLUMNS)
    assert visible_columns(0) == ("#", "weights", "KV")
