"""Per-GPU stacked memory bars for one plan: weights / KV cache / activations / overhead / free."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from planner.units import fmt_bytes

SEGMENTS = (("weights", "weights", "#4f8fe8"), ("kv_cache", "KV cache", "#c46fe0"),
            ("activations", "activations", "#e8b04f"), ("overhead", "overhead", "#9aa0a6"))
FREE_STYLE = "#3b4252"


def rank_rows(cand) -> list[dict]:
    """One row per GPU (rank order): its device, usable bytes and the estimate's line items."""
    rows = []
    for r, dev, usable in zip(cand.estimate.ranks, cand.devices, cand.usable):
        b = r.bytes()
        rows.append({"rank": r.rank, "gpu": dev.index, "name": dev.profile.display,
                     "usable": usable, "free": usable - b["total"], **b})
    return rows


def segment_widths(row: dict, width: int) -> list[int]:
    """Cells for each segment and free space: proportional to bytes out of max(usable, total),
    every non-zero part at least one cell, summing to ``width``."""
    parts = [row[k] for k, _, _ in SEGMENTS] + [max(row["free"], 0)]
    whole = max(row["usable"], row["total"], 1)
    cells = [max(1, round(p * width / whole)) if p > 0 else 0 for p in parts]
    while sum(cells) > width:  # take the excess from the largest part
        i = max(range(len(cells)), key=lambda j: cells[j])
        cells[i] -= 1
    if sum(cells) < width:
        i = max(range(len(cells)), key=lambda j: parts[j])
        cells[i] += width - sum(cells)
    return cells


class GPUBars(Widget):
    """One stacked bar per GPU with byte figures and a legend."""

    DEFAULT_CSS = """
    GPUBars { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[dict] = []

    def show(self, cand) -> None:
        self.rows = rank_rows(cand) if cand is not None else []
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self.render_lines_text(width)))

    def render(self) -> Text:
        return Text("\n").join(self.render_lines_text(self.size.width))

    def render_lines_text(self, width: int) -> list[Text]:
        if not self.rows:
            return [Text("no plan selected", style="dim")]
        width = max(width, 30)
        label_w = max(len(f"{r['gpu']} {r['name']}") for r in self.rows)
        figure = [f"{fmt_bytes(r['total'])} / {fmt_bytes(r['usable'])}" for r in self.rows]
        fig_w = max(len(f) for f in figure)
        bar_w = max(8, width - label_w - fig_w - 2)
        lines = []
        for r, fig in zip(self.rows, figure):
            t = Text(f"{r['gpu']} {r['name']}".ljust(label_w) + " ")
            cells = segment_widths(r, bar_w)
            for (key, _, colour), n in zip(SEGMENTS, cells):
                t.append("█" * n, style=colour)
            t.append("░" * cells[-1], style=FREE_STYLE)
            over = r["free"] < 0
            t.append(" " + fig.rjust(fig_w), style="bold red" if over else "")
            lines.append(t)
        lines.extend(self._legend(width))
        return lines

    def _legend(self, width: int) -> list[Text]:
        """Colour key with each part's bytes; per GPU where the GPUs differ."""
        keys = [(k, label, c) for k, label, c in SEGMENTS] + [("free", "free", FREE_STYLE)]
        groups: list[tuple[list[int], dict]] = []
        for r in self.rows:
            figs = {k: r[k] for k, _, _ in keys}
            if groups and groups[-1][1] == figs:
                groups[-1][0].append(r["gpu"])
            else:
                groups.append(([r["gpu"]], figs))
        out = []
        for gpus, figs in groups:
            who = (f"GPU {gpus[0]}" if len(gpus) == 1 else f"GPUs {gpus[0]}-{gpus[-1]}")
            if len(groups) == 1:
                who = "each GPU" if len(gpus) > 1 else who
            items = []
            for k, label, colour in keys:
                item = Text()
                item.append("■ " if k != "free" else "░ ", style=colour)
                item.append(f"{label} ")
                item.append(fmt_bytes(figs[k]), style="bold red" if figs[k] < 0 else "bold")
                items.append(item)
            line = Text(f"{who}: ", style="dim")
            for item in items:
                if line.cell_len + item.cell_len + 2 > width and line.plain.strip():
                    out.append(line)
                    line = Text("  ")
                line.append_text(item)
                line.append("  ")
            out.append(line)
        return out
