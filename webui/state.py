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

from webui.i18n import Labels

Updates = dict[Any, Any]  # gradio component -> its new value or gr.update(...): a handler's return


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
