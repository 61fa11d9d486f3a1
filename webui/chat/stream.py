"""Streaming a chat's answer (no Gradio): the answer's tokens reach the tab while the model writes them.

The agent's pipeline is unchanged: its answer call goes through :class:`StreamingBackend`, which hands
a one-prompt call to the backend's ``generate_streaming`` (:mod:`memfactory.backends.streaming`) and
passes the text so far to the chat. :func:`in_thread` runs the step in a worker thread and yields each
time the text grows, so the tab's generator shows it; Stop makes the next token raise, which ends the
generation within a token. Backends without ``generate_streaming`` (vLLM) answer in one piece.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from memfactory.types import ChatPrompt, Generation, SamplingParams


class StreamingBackend:
    """``backend`` for one step: its one-prompt calls stream ``prefix + text so far`` to ``on_text``, except
    the first ``skip`` (RMM's reranker call precedes the answer: its list of numbers is not shown)."""

    def __init__(self, backend: Any, on_text: Callable[[str], None], *, skip: int = 0):
        self.inner = backend
        self.on_text = on_text
        self.skip = skip

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        stream = getattr(self.inner, "generate_streaming", None)
        if len(prompts) != 1 or not callable(stream) or self.skip > 0:
            self.skip -= 1
            return self.inner.generate(prompts, params)
        prefix = prompts[0].assistant_prefix
        return [stream(prompts[0], params, lambda text: self.on_text(prefix + text))]

    def __getattr__(self, name: str) -> Any:  # name, exposes_tokens, tokenizer, render_prompt, ...
        return getattr(self.inner, name)


def in_thread(work: Callable[[], None], changed: threading.Event, cancel: threading.Event) -> Iterator[None]:
    """Run ``work`` in a worker thread, yielding each time ``changed`` is set while it runs; its exception
    is raised here once it ends. Closing the generator sets ``cancel`` and leaves the worker to end itself."""
    done = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
        finally:
            done.set()
            changed.set()

    worker = threading.Thread(target=target, name="mf-chat-step", daemon=True)
    worker.start()
    try:
        while True:
            changed.wait()
            changed.clear()
            if done.is_set():
                break
            yield
    except GeneratorExit:
        # the tab went away mid-step: the worker stops at its next token or step, on its own (this close
        # may run in the server's event loop, which must not wait for a model call)
        cancel.set()
        raise
    worker.join()
    if failure:
        raise failure[0]
