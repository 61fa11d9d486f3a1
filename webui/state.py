"""What every tab's ``build`` gets, and what tabs lend each other, as types instead of string keys.

``webui.app.TABS`` builds the tabs in order; a tab reads only what a tab listed before it put in
``ctx.shared``. A field left ``None`` means its owner failed to build (the app then shows that
tab's error); a tab that reads it says what it cannot offer instead of failing too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from webui.i18n import Labels

Updates = dict[Any, Any]  # gradio component -> its new value or gr.update(...): a handler's return


def refreshed_choices(choices: Sequence[str], current: Any, fallback: Any = None) -> Any:
    """A dropdown's update to fresh ``choices`` that sends a value only when ``current`` is no longer
    offered (then ``fallback``; a multiselect keeps what is still offered). A value sent back unchanged
    could undo a pick the user made while this event waited in the queue (a timer's refresh under load)."""
    if isinstance(current, list):
        kept = [value for value in current if value in choices]
        return gr.update(choices=list(choices)) if kept == current else gr.update(choices=list(choices), value=kept)
    if current in choices or (current is None and fallback is None):
        return gr.update(choices=list(choices))
    return gr.update(choices=list(choices), value=fallback if fallback in choices else None)


def button_on(on: bool) -> Any:
    """A button's update to on or off (``interactive``)."""
    return gr.update(interactive=on)


def run_while_off(trigger: Callable[..., Any], button: gr.Button, fn: Callable[..., Any], inputs: Any, outputs: Any,
                  **kwargs: Any) -> Any:
    """``trigger`` (``button.click``, or another event that does the button's work, such as a textbox's
    ``submit``) runs ``fn`` with ``button`` off meanwhile and on again whatever the end. Gradio drops a
    click on a trigger whose previous event is still pending, without a word; an off button says so.
    Returns the last step, for more ``.then``."""
    return trigger(lambda: button_on(False), None, button, show_progress="hidden", concurrency_limit=None).then(
        fn, inputs, outputs, **kwargs).then(
        lambda: button_on(True), None, button, show_progress="hidden", concurrency_limit=None)


@dataclass(frozen=True)
class OpenInAssemble:
    """The Assemble tab's form, lent to other tabs: show a preset file there (Runs: "open in Assemble")."""

    outputs: Sequence[Any]  # every component ``fill`` may update (status, save name, the form's widgets)
    fill: Callable[[Path], Updates]  # updates showing the preset file; raises MemFactoryError/OSError/YAMLError


@dataclass
class Shared:
    """What tabs lend each other; each field names its owner and its readers."""

    tabs: Any = None  # the gr.Tabs (the app's): a handler returning gr.Tabs(selected=<tab id>) switches tab
    preset_choices: Any = None  # Assemble's saved-presets dropdown; Train follows what is picked or saved there
    open_in_assemble: OpenInAssemble | None = None  # Assemble's form; Runs opens a run's preset in it


@dataclass
class UIContext:
    """The app being built: its Blocks, the relabelling on a locale switch, the locale, the shared state."""

    demo: Any  # the gr.Blocks being built
    labels: Labels
    lang: Any = None  # the locale dropdown ("en" / "zh"), for handlers that write text
    shared: Shared = field(default_factory=Shared)
