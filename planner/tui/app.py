"""The ``planner tui`` application (Textual).

Layout: a form on the left (model, GPU set, workload, engine, objective, allowed formats), the
ranked plans on the right, and below them, for the selected plan, per-GPU memory bars, a
capacity map and the rejected candidates. Every change recomputes in a worker thread
(:func:`planner.tui.model.compute`, the search ``planner recommend`` runs); results that arrive
after a newer change are dropped, so the screen never shows a stale mix.
"""

from __future__ import annotations

import logging
import os

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.suggester import SuggestFromList, Suggester
from textual.widgets import (DataTable, Footer, Input, Label, Select, SelectionList, Static,
                             TabbedContent, TabPane)

from planner.errors import PlannerError
from planner.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from planner.tui import model as M
from planner.tui.bars import GPUBars
from planner.tui.capacity import CapacityMap
from planner.tui.screens import ConfirmScreen, ModelPicker, SaveScreen, TextScreen
from planner.units import fmt_bytes

log = logging.getLogger(__name__)

PLAN_COLUMNS = (("#", 3), ("weights", 12), ("KV", 4), ("TP", 2), ("PP", 2), ("GPUs", 4),
                ("per-GPU", 10), ("headroom", 10), ("max batch", 9), ("max ctx", 8),
                ("prefill", 8), ("tok/s", 8))
"""Fixed widths: columns do not jump about as results change while typing."""
PLAN_PRIORITY = ("#", "weights", "KV", "TP", "PP", "GPUs", "max ctx", "tok/s", "headroom",
                 "max batch", "per-GPU", "prefill")
"""Which plan columns stay when the table is too narrow for all of them, first kept first; the
kept ones keep PLAN_COLUMNS' order."""
CELL_PADDING = 1
"""DataTable's default cell padding on each side of a column."""


def visible_columns(width: int) -> tuple[str, ...]:
    """The plan columns that fit in ``width`` cells, by PLAN_PRIORITY (never fewer than 3)."""
    widths = dict(PLAN_COLUMNS)
    kept, used = [], 0
    for label in PLAN_PRIORITY:
        need = widths[label] + 2 * CELL_PADDING
        if used + need > width and len(kept) >= 3:
            break
        kept.append(label)
        used += need
    return tuple(label for label, _ in PLAN_COLUMNS if label in kept)
REJECTED_COLUMNS = ("weights", "KV", "TP", "PP", "short by", "reason")

DEBOUNCE_S = 0.04
"""Wait this long after a keystroke before searching, so a burst of typing searches once."""

HELP = """\
planner tui: the plans `planner recommend` ranks, live.

Form (left): model (a catalog name, completed as you type; ctrl+o lists the catalog; or a path
to a config.json, safetensors or GGUF file), GPU set (4x3090, 8xA100-40G, 2x4090+1x3090, h100:8,
cpu or local), batch, prompt and new tokens per sequence (4k = 4096), engine, objective, and the
weight and KV-cache formats the search may use (space toggles one). Every change recomputes.

Plans (right): every layout that fits, in recommend's order. Pick one with the arrows or the
mouse; below it: one bar per GPU (weights, KV cache, activations, overhead, free), headroom,
capacity and roofline speed; the Capacity tab maps batch × context (fits / tight / does not
fit); the Rejected tab lists every candidate that cannot run, and why.

Keys
  s         save the selected plan (the file `planner recommend -o` writes)
  l         the launch command for the saved plan (planner launch PLAN)
  e         export commands: vLLM, SGLang, TensorRT-LLM, llama.cpp
  ctrl+o    pick a model from the catalog
  tab       next field;  escape: back to the plans table
  ?         this help
  q         quit (ctrl+q from inside a text field)
"""


class GPUSuggester(Suggester):
    """Completes the GPU name being typed in the last term of a set: '4x30' -> '4x3090'."""

    def __init__(self) -> None:
        super().__init__(use_cache=True, case_sensitive=False)
        from planner.hardware import profiles

        names = []
        for p in profiles():
            names += [p.name, *(a for a in p.aliases if " " not in a and a == a.lower())]
        self.names = sorted(set(names), key=lambda n: (len(n), n))

    async def get_suggestion(self, value: str) -> str | None:
        cut = max(value.rfind(ch) for ch in "x×:+")
        head, term = value[:cut + 1], value[cut + 1:].strip()
        if not term or (cut >= 0 and value[cut] == ":"):
            return None
        for n in self.names:
            if n.startswith(term) and n != term:
                return head + n
        return None


class Field(Vertical):
    """A labelled input row with its inline message line below it."""

    def __init__(self, label: str, widget, name: str) -> None:
        super().__init__(classes="field", id=f"field-{name}")
        self.label, self.widget, self.field_name = label, widget, name

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label(self.label, classes="label")
            yield self.widget
        yield Static("", classes="msg", id=f"msg-{self.field_name}")

    def set_message(self, text: str | None, error: bool) -> None:
        msg = self.query_one(".msg", Static)
        msg.update(Text(text or ""))
        msg.set_class(bool(error), "error")
        msg.display = bool(text)
        self.widget.set_class(bool(error), "invalid")


class PlannerApp(App):
    """Interactive planner."""

    CSS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.tcss")
    TITLE = "planner"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    BINDINGS = [
        Binding("s", "save", "Save"),
        Binding("l", "launch", "Launch"),
        Binding("e", "export", "Export"),
        Binding("ctrl+o", "pick_model", "Models"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("ctrl+s", "save", "Save", show=False, priority=True),
        Binding("escape", "focus_plans", show=False),
    ]

    def __init__(self, model: str = "", gpus: str = "local", batch: str = "1",
                 prompt_tokens: str = "2048", new_tokens: str = "256", engine: str = "runtime",
                 objective: str = DEFAULT_OBJECTIVE, remember: bool = False) -> None:
        super().__init__()
        self.remember = remember
        """Remember the last model and GPU set that gave plans (planner tui; not tests)."""
        self._remember: tuple[str, str] | None = None
        self._columns: tuple[str, ...] = tuple(label for label, _ in PLAN_COLUMNS)
        self.initial = M.Inputs(model=model or "", gpus=gpus or "", batch=str(batch),
                                prompt=str(prompt_tokens), new=str(new_tokens),
                                engine=engine or "runtime",
                                objective=objective or DEFAULT_OBJECTIVE)
        self.result: M.Result | None = None
        """The latest result that had no input errors."""
        self.last: M.Result | None = None
        """The latest result, errors or not."""
        self.selected = None
        """The selected plan (a planner.search.Candidate)."""
        self.capacity = None
        """The capacity map of the selected plan."""
        self.saved_path: str | None = None
        self._gen = 0
        """Generation of the latest change; results of older ones are dropped."""
        self._applied = 0
        self._cap_gen = 0
        self._cap_applied = 0
        self._timer = None
        self._started = False
        self._engine = self.initial.engine

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        from planner import catalog

        i = self.initial
        names = sorted({n for e in catalog.entries()
                        for n in (e.spec.name, *e.aliases)}, key=str.lower)
        engines = M.engine_names()
        eng = i.engine if i.engine in engines else "runtime"
        with Horizontal(id="main"):
            with VerticalScroll(id="form"):
                yield Field("Model", Input(i.model, placeholder="catalog name or path",
                                           id="model", compact=True,
                                           suggester=SuggestFromList(names, case_sensitive=False)),
                            "model")
                yield Field("GPUs", Input(i.gpus, placeholder="4x3090, local, cpu",
                                          id="gpus", compact=True, suggester=GPUSuggester()),
                            "gpus")
                yield Field("Batch", Input(i.batch, id="batch", compact=True), "batch")
                yield Field("Prompt", Input(i.prompt, id="prompt", compact=True), "prompt")
                yield Field("New", Input(i.new, id="new", compact=True), "new")
                yield Field("Engine", Select([(e, e) for e in engines], value=eng,
                                             allow_blank=False, id="engine", compact=True),
                            "engine")
                yield Field("Rank by", Select([(o, o) for o in OBJECTIVES],
                                              value=i.objective if i.objective in OBJECTIVES
                                              else DEFAULT_OBJECTIVE,
                                              allow_blank=False, id="objective", compact=True),
                            "objective")
                yield Label("Weight formats", classes="section")
                yield SelectionList(*[(k, k, True) for k in M.weight_choices(eng)], id="weights")
                yield Static("", classes="msg", id="msg-weights")
                yield Label("KV-cache formats", classes="section")
                yield SelectionList(*[(k, k, True) for k in M.kv_choices(eng)], id="kv")
                yield Static("", classes="msg", id="msg-kv")
            with Vertical(id="results"):
                yield Static("", id="summary")
                yield DataTable(id="plans", cursor_type="row", zebra_stripes=True)
                with TabbedContent(id="detail"):
                    with TabPane("Memory", id="tab-memory"):
                        with Horizontal(id="memory-row"):
                            with VerticalScroll(id="memory-col"):
                                yield Static("", id="stats")
                                yield GPUBars(id="bars")
                            # wide screens show the capacity map beside the bars too
                            yield CapacityMap(id="capmap-side", classes="side")
                    with TabPane("Capacity", id="tab-capacity"):
                        with VerticalScroll():
                            yield CapacityMap(id="capmap")
                    with TabPane("Rejected", id="tab-rejected"):
                        yield DataTable(id="rejected", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        plans = self.query_one("#plans", DataTable)
        self._plan_columns(plans)
        self.query_one("#rejected", DataTable).add_columns(*REJECTED_COLUMNS)
        for msg in self.query(".msg"):
            msg.display = False
        if not self.initial.model.strip():
            self.query_one("#model", Input).focus()
        else:
            plans.focus()
        self._started = True
        self.recompute()

    # -- inputs ------------------------------------------------------------------------------

    def inputs(self) -> M.Inputs:
        def val(wid: str) -> str:
            return self.query_one(f"#{wid}", Input).value

        def chosen(wid: str, all_keys) -> tuple[str, ...] | None:
            sel = tuple(self.query_one(f"#{wid}", SelectionList).selected)
            return None if set(sel) == set(all_keys) else sel

        eng = self.query_one("#engine", Select).value
        return M.Inputs(model=val("model"), gpus=val("gpus"), batch=val("batch"),
                        prompt=val("prompt"), new=val("new"),
                        weights=chosen("weights", M.weight_choices(eng)),
                        kv=chosen("kv", M.kv_choices(eng)), engine=str(eng),
                        objective=str(self.query_one("#objective", Select).value))

    @on(Input.Changed, "#form Input")
    def _input_changed(self) -> None:
        self.recompute()

    @on(Select.Changed, "#objective")
    def _objective_changed(self) -> None:
        self.recompute()

    @on(Select.Changed, "#engine")
    def _engine_changed(self, event: Select.Changed) -> None:
        eng = str(event.value)
        if eng != self._engine:  # the format lists follow the engine (recommend's defaults)
            self._engine = eng
            for wid, keys in (("weights", M.weight_choices(eng)), ("kv", M.kv_choices(eng))):
                sl = self.query_one(f"#{wid}", SelectionList)
                sl.clear_options()
                sl.add_options([(k, k, True) for k in keys])
        self.recompute()

    @on(SelectionList.SelectedChanged)
    def _formats_changed(self) -> None:
        self.recompute()

    @property
    def busy(self) -> bool:
        """True while a change has not reached the screen yet (tests wait on this)."""
        return self._gen != self._applied or self._cap_gen != self._cap_applied

    def recompute(self) -> None:
        """Recompute after a short pause in typing (keystrokes in a burst make one search)."""
        if not self._started:
            return
        self._gen += 1
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_S, self._start_compute)

    def _start_compute(self) -> None:
        self._timer = None
        self.query_one("#summary", Static).update(Text("computing…", style="dim"))
        self._compute(self._gen, self.inputs())

    @work(thread=True, exclusive=True, group="compute", exit_on_error=False)
    def _compute(self, gen: int, inp: M.Inputs) -> None:
        try:
            res = M.compute(inp)
        except Exception as e:  # a bug, not bad input: keep the app alive and say what broke
            log.exception("compute failed")
            res = M.Result(inp, errors={"model": f"internal error: {type(e).__name__}: {e}"})
        self.call_from_thread(self._apply, gen, res)

    # -- results -----------------------------------------------------------------------------

    def _apply(self, gen: int, res: M.Result) -> None:
        if gen != self._gen:
            return  # a newer change is being computed
        self._applied = gen
        self.last = res
        for name in ("model", "gpus", "batch", "prompt", "new", "engine", "objective"):
            err = res.errors.get(name)
            self.query_one(f"#field-{name}", Field).set_message(
                err or res.notes.get(name), error=err is not None)
        for name in ("weights", "kv"):
            msg = self.query_one(f"#msg-{name}", Static)
            msg.update(Text(res.errors.get(name, "")))
            msg.set_class(True, "error")
            msg.display = name in res.errors
        summary = self.query_one("#summary", Static)
        if not res.ok:
            stale = " (showing the last valid plans)" if self.result is not None else ""
            summary.update(Text(f"⚠ fix the field marked in red{stale}", style="bold red"))
            return
        self.result = res
        if res.plans:
            self._remember = (res.inputs.model, res.inputs.gpus)
        self._fill_plans(res)
        self._fill_rejected(res)
        spec = res.source.spec
        head = Text()
        head.append(spec.name.split("/")[-1], style="bold")
        head.append(f" on {res.gpuset.text} · ")
        if res.plans:
            head.append(f"{len(res.plans)} plans fit", style="bold green")
        else:
            head.append("nothing fits", style="bold red")
        head.append(f" · {len(res.rejected)} rejected")
        summary.update(head)

    def _fill_plans(self, res: M.Result) -> None:
        table = self.query_one("#plans", DataTable)
        keep = self.selected.label() if self.selected is not None else None
        table.clear()
        row_to_select = 0
        for i, c in enumerate(res.plans):
            worst = max(c.estimate.ranks, key=lambda r: r.total)
            perf = c.roofline
            cells = dict(zip((label for label, _ in PLAN_COLUMNS), (
                Text(str(i + 1), justify="right"), c.weights.key, c.kv.key,
                Text(str(c.tp), justify="right"), Text(str(c.pp), justify="right"),
                Text(str(c.gpus), justify="right"),
                Text(fmt_bytes(worst.total), justify="right"),
                Text(fmt_bytes(c.headroom), justify="right"),
                Text(f"{c.max_batch:,}" if c.max_batch is not None else "-", justify="right"),
                Text(f"{c.max_context:,}" if c.max_context is not None else "-",
                     justify="right"),
                Text(f"{perf.prefill_s:.3g} s" if perf else "-", justify="right"),
                Text(f"{perf.decode_tokens_per_s:,.1f}" if perf else "-", justify="right"))))
            table.add_row(*(cells[label] for label in self._columns), key=str(i))
            if c.label() == keep:
                row_to_select = i
        if res.plans:
            table.move_cursor(row=row_to_select)
            self._select(res.plans[row_to_select])
        else:
            self._select(None)

    def _plan_columns(self, table: DataTable) -> None:
        for label, width in PLAN_COLUMNS:
            if label in self._columns:
                table.add_column(label, width=width)

    def on_resize(self, event) -> None:
        self.call_after_refresh(self._fit_columns)

    def _fit_columns(self) -> None:
        """Drop the plan columns that do not fit, by priority, rather than cutting them."""
        table = self.query_one("#plans", DataTable)
        # room for a vertical scrollbar whether or not the rows need one yet
        width = table.size.width - table.styles.scrollbar_size_vertical
        if width <= 0:
            return
        cols = visible_columns(width)
        if cols == self._columns:
            return
        self._columns = cols
        table.clear(columns=True)
        self._plan_columns(table)
        if self.result is not None:
            self._fill_plans(self.result)

    def on_unmount(self) -> None:
        if self.remember and self._remember is not None:
            M.save_last(*self._remember)

    def _fill_rejected(self, res: M.Result) -> None:
        table = self.query_one("#rejected", DataTable)
        table.clear(columns=True)
        table.add_columns(*REJECTED_COLUMNS)
        for r in res.rejected:
            table.add_row(r.weights, r.kv, Text(str(r.tp), justify="right"),
                          Text(str(r.pp), justify="right"),
                          Text(fmt_bytes(r.shortfall_bytes) if r.shortfall_bytes else "-",
                               justify="right"),
                          r.reason)
        tc = self.query_one("#detail", TabbedContent)
        tc.get_tab("tab-rejected").label = f"Rejected ({len(res.rejected)})"

    @on(DataTable.RowHighlighted, "#plans")
    def _plan_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.result is None or event.row_key is None or event.row_key.value is None:
            return
        i = int(event.row_key.value)
        if i < len(self.result.plans) and self.result.plans[i] is not self.selected:
            self._select(self.result.plans[i])

    def _select(self, cand) -> None:
        self.selected = cand
        self.query_one("#bars", GPUBars).show(cand)
        stats = self.query_one("#stats", Static)
        if cand is None:
            stats.update(Text("nothing fits: the Rejected tab says by how much", style="dim"))
            self.capacity = None
            for wid in ("#capmap", "#capmap-side"):
                self.query_one(wid, CapacityMap).show(None)
            return
        t = Text()
        t.append(cand.label(), style="bold")
        t.append("\nheadroom ")
        t.append(fmt_bytes(cand.headroom), style="bold green" if cand.headroom >= 0 else "red")
        t.append(" · max batch ")
        t.append(f"{cand.max_batch:,}" if cand.max_batch is not None else "-", style="bold")
        t.append(" · max context ")
        t.append(f"{cand.max_context:,}" if cand.max_context is not None else "-", style="bold")
        if cand.max_context_limited_by_model:
            t.append(" (model's)", style="dim")
        if cand.roofline:
            t.append("\nprefill ")
            t.append(f"{cand.roofline.prefill_s:.3g} s", style="bold")
            t.append(" · decode ")
            t.append(f"{cand.roofline.decode_tokens_per_s:,.1f} tok/s", style="bold")
            t.append(" (roofline)", style="dim")
        stats.update(t)
        self._cap_gen += 1
        self._capacity(self._cap_gen, self.result, cand)

    @work(thread=True, exclusive=True, group="capacity", exit_on_error=False)
    def _capacity(self, gen: int, res: M.Result, cand) -> None:
        try:
            grid = M.capacity_map(res.problem, cand)
        except Exception:  # a bug: leave the map empty, log it
            log.exception("capacity map failed")
            grid = None
        self.call_from_thread(self._apply_capacity, gen, cand, grid)

    def _apply_capacity(self, gen: int, cand, grid) -> None:
        if gen != self._cap_gen:
            return
        self._cap_applied = gen
        self.capacity = grid
        for wid in ("#capmap", "#capmap-side"):
            self.query_one(wid, CapacityMap).show(
                grid, "capacity: batch × context (prompt + new tokens)")

    # -- actions -----------------------------------------------------------------------------

    def action_focus_plans(self) -> None:
        self.query_one("#plans", DataTable).focus()

    def action_pick_model(self) -> None:
        from planner import catalog
        from planner.spec import param_count
        from planner.units import fmt_count

        rows = [(e.spec.name, f"{e.spec.name}  ({', '.join(e.aliases)}) · "
                              f"{fmt_count(param_count(e.spec))}")
                for e in catalog.entries()]

        def picked(name: str | None) -> None:
            if name:
                self.query_one("#model", Input).value = name
                self.action_focus_plans()

        self.push_screen(ModelPicker(rows), picked)

    def _need_plan(self) -> bool:
        if self.result is None or self.selected is None:
            self.notify("no plan to use yet: fix the inputs until a plan fits", severity="warning")
            return False
        return True

    def action_save(self) -> None:
        if not self._need_plan():
            return
        res, cand = self.result, self.selected
        default = self.saved_path or M.default_plan_path(res, cand)
        screen = SaveScreen(default, cand.label())

        def chosen(path: str | None) -> None:
            if path:
                self._save(path, res, cand, force=False)

        self.push_screen(screen, chosen)

    def _save(self, path: str, res, cand, force: bool) -> None:
        full = os.path.expanduser(path)
        if not force and os.path.lexists(full):
            def answer(yes: bool | None) -> None:
                if yes:
                    self._save(path, res, cand, force=True)
            self.push_screen(ConfirmScreen(f"{path} exists. Overwrite it?"), answer)
            return
        try:
            self.saved_path = M.save_plan(path, res, cand, force=force)
        except PlannerError as e:
            self.notify(str(e), severity="error", timeout=8)
            return
        self.notify(f"plan written to {self.saved_path}", timeout=5)

    def action_launch(self) -> None:
        if not self._need_plan():
            return
        from planner.export import render

        path = self.saved_path or M.default_plan_path(self.result, self.selected)
        cmd = render(["planner", "launch", path])
        note = ("" if self.saved_path else
                "\n\n(not saved yet: press s to write the plan file first)")
        self.push_screen(TextScreen("Launch", f"{cmd}\n\nruns {self.selected.label()} with "
                                              f"this project's runtime{note}", cmd))

    def action_export(self) -> None:
        if not self._need_plan():
            return
        try:
            cmds = M.export_commands(self.result, self.selected)
        except PlannerError as e:
            self.notify(str(e), severity="error")
            return
        lines, copy = [], []
        for eng, cmd, notes in cmds:
            lines.append(f"# {eng}")
            if cmd:
                lines.append(cmd)
                copy.append(cmd)
            lines += [f"#   {n}" for n in notes]
            lines.append("")
        self.push_screen(TextScreen(f"Export {self.selected.label()}", "\n".join(lines),
                                    "\n".join(copy)))

    def action_help(self) -> None:
        self.push_screen(TextScreen("Help", HELP))
