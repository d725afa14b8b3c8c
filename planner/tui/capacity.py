"""The capacity map: batch × context cells coloured fits / tight / does not fit for one layout."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

STATES = {"fits": ("✓", "#1b5e20", "fits"),
          "tight": ("~", "#8d6e00", "tight (<10% free)"),
          "no": ("✗", "#7f1d1d", "does not fit")}


def ctx_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


class CapacityMap(Widget):
    """Rows: batch sizes; columns: contexts (prompt + new tokens); the workload's cell marked ●."""

    DEFAULT_CSS = """
    CapacityMap { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.grid = None
        self.title = ""

    def show(self, grid, title: str = "") -> None:
        self.grid, self.title = grid, title
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Text:
        return Text("\n").join(self._lines(self.size.width))

    def _lines(self, width: int) -> list[Text]:
        g = self.grid
        if g is None:
            return [Text("no plan selected", style="dim")]
        head_w = 6
        cell_w = max(4, min(8, (max(width, 30) - head_w) // max(len(g.contexts), 1)))
        lines = []
        if self.title:
            lines.append(Text(self.title, style="dim"))
        head = Text("batch".ljust(head_w), style="dim")
        for c in g.contexts:
            head.append(ctx_label(c).center(cell_w),
                        style="bold" if c == g.current[1] else "dim")
        lines.append(head)
        # the workload's cell: the smallest row and column that hold it (none if off the map)
        mb = next((b for b in g.batches if b >= g.current[0]), None)
        mc = next((c for c in g.contexts if c >= g.current[1]), None)
        for b, row in zip(g.batches, g.cells):
            t = Text(str(b).rjust(head_w - 1) + " ", style="bold" if b == g.current[0] else "dim")
            for c, state in zip(g.contexts, row):
                mark, colour, _ = STATES[state]
                if (b, c) == (mb, mc):
                    mark = "●"
                t.append(mark.center(cell_w - 1) + " ", style=f"bold white on {colour}")
            lines.append(t)
        items = []
        for state, (mark, colour, label) in STATES.items():
            item = Text()
            item.append(f" {mark} ", style=f"bold white on {colour}")
            item.append(f" {label}")
            items.append(item)
        items.append(Text(f"● workload: batch {g.current[0]:,} × {g.current[1]:,}", style="dim"))
        if not (mb and mc):
            items.append(Text("(off the map)", style="dim"))
        key = Text()
        for item in items:
            if key.cell_len and key.cell_len + item.cell_len + 2 > max(width, 30):
                lines.append(key)
                key = Text()
            if key.cell_len:
                key.append("  ")
            key.append_text(item)
        lines.append(key)
        return lines
