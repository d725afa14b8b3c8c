"""Modal screens: save prompt, overwrite confirmation, text (launch / export / help), model picker."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option


class SaveScreen(ModalScreen[str | None]):
    """Ask for the plan file's path; dismisses with the path or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: str, label: str) -> None:
        super().__init__()
        self.default, self.label = default, label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Save plan [b]{self.label}[/b] to:")
            yield Input(self.default, id="path")
            yield Static("", id="save-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def show_error(self, text: str) -> None:
        self.query_one("#save-error", Static).update(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._ok()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._ok()
        else:
            self.dismiss(None)

    def _ok(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if not path:
            self.show_error("give a file name")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n", "answer(False)", "No"),
                Binding("escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            with Horizontal(classes="buttons"):
                yield Button("Overwrite (y)", variant="warning", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TextScreen(ModalScreen[None]):
    """Read-only text with a copy key (OSC 52 clipboard) and close keys."""

    BINDINGS = [Binding("escape,q", "close", "Close"), Binding("c", "copy", "Copy")]

    def __init__(self, title: str, body: str, copy_text: str | None = None) -> None:
        super().__init__()
        self.title_text, self.body, self.copy_text = title, body, copy_text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"[b]{self.title_text}[/b]")
            with VerticalScroll(classes="body"):
                yield Static(self.body, id="text-body", markup=False)
            with Horizontal(classes="buttons"):
                if self.copy_text:
                    yield Button("Copy (c)", id="copy")
                yield Button("Close (esc)", id="close", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.dismiss(None)

    def action_copy(self) -> None:
        if self.copy_text:
            self.app.copy_to_clipboard(self.copy_text)
            self.notify("copied to the clipboard (terminals with OSC 52)", timeout=3)

    def action_close(self) -> None:
        self.dismiss(None)


class ModelPicker(ModalScreen[str | None]):
    """The catalog, filtered as you type; Enter or a click picks."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("down", "down", show=False),
                Binding("up", "up", show=False)]

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = rows  # (name, searchable description)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("[b]Pick a model[/b] (type to filter; a path also works in the form)")
            yield Input(placeholder="filter: llama, 70b, glm…", id="filter")
            yield OptionList(id="models")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one("#filter", Input).focus()

    def _fill(self, text: str) -> None:
        words = text.lower().split()
        ol = self.query_one("#models", OptionList)
        ol.clear_options()
        ol.add_options([Option(desc, id=name) for name, desc in self.rows
                        if all(w in desc.lower() for w in words)])
        if ol.option_count:
            ol.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        ol = self.query_one("#models", OptionList)
        if ol.highlighted is not None and ol.option_count:
            self.dismiss(ol.get_option_at_index(ol.highlighted).id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_down(self) -> None:
        self.query_one("#models", OptionList).action_cursor_down()

    def action_up(self) -> None:
        self.query_one("#models", OptionList).action_cursor_up()

    def action_cancel(self) -> None:
        self.dismiss(None)
