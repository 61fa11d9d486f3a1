"""Text as it is generated, for chat UIs: ``generate_streaming(prompt, params, on_text)``.

The local ``hf`` backend and the OpenAI-compatible one offer it next to ``generate``: one prompt,
the same :class:`~memfactory.types.Generation` as ``generate`` returns (stop strings, finish reason),
and ``on_text(text_so_far)`` called as tokens arrive. ``on_text`` may raise to end the generation
early (a chat's Stop): the exception leaves ``generate_streaming`` and no Generation is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OnText = Callable[[str], None]


class TokenStreamer:
    """A transformers streamer (``put``/``end``) for one row: the prompt's ``put`` is skipped, then every
    new token re-decodes the response so far (a word split over tokens never shows half-decoded)."""

    def __init__(self, tokenizer: Any, on_text: OnText):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.ids: list[int] = []
        self._prompt_seen = False
        self._shown = ""

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() puts the prompt first
            self._prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text != self._shown:
            self._shown = text
            self.on_text(text)

    def restart(self) -> None:
        """Forget what was seen: the generation starts over (a compiled decode fell back to eager)."""
        self.ids, self._prompt_seen = [], False

    def end(self) -> None:
        """Nothing to flush: every token was shown as it came."""
