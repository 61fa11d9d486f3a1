"""One tab per module in this package, discovered at start-up (like the CLI's commands).

A tab module defines ``ORDER: int`` (position, lower first) and ``build(ctx: UIContext) -> None``,
which draws its components inside the ``gr.Tab`` it opens and wires its events. ``ctx.labels``
relabels components on a locale switch; ``ctx.shared`` lets tabs hand components to each other
(e.g. the Assemble tab publishes ``ctx.shared["preset_choices"]``, its saved-presets dropdown, and
``"assemble_load_outputs"`` / ``"assemble_load_file"``: the components a preset fills and
``fill(path) -> updates`` for them; the app publishes ``"tabs"``, the ``gr.Tabs`` to switch tab with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webui.i18n import Labels


@dataclass
class UIContext:
    demo: Any  # the gr.Blocks being built
    labels: Labels
    lang: Any = None  # the locale dropdown ("en" / "zh"), for handlers that write text
    shared: dict[str, Any] = field(default_factory=dict)
