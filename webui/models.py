"""Models the web UI keeps loaded between runs (no Gradio): one cache class for the Playground and the Chat tab.

A backend is keyed by what it loads (:func:`backend_key`), so two workflows or two chats on the same
model share it. Each tab owns one cache: the Playground lets go of the models its next comparison does
not need, which must not close a model a chat is talking to. ``get`` holds a lock, so two browser tabs
asking for the same model at once load it once; generation itself runs outside the lock.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from memfactory.backends.build import build_backend

log = logging.getLogger(__name__)


def backend_key(model: Any) -> tuple:
    """What a loaded backend depends on: two workflows with the same key share one model."""
    return (model.backend, model.path, model.checkpoint or None, model.base_url or None, model.dtype,
            model.enable_thinking, model.seed)


class BackendCache:
    """Backends by :func:`backend_key`; the oldest is dropped past ``max_items`` (None = no limit)."""

    def __init__(self, max_items: int | None = None, factory: Callable[[Any], Any] | None = None) -> None:
        self.max_items = max_items
        self._factory = factory
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0

    def get(self, model: Any) -> Any:
        key = backend_key(model)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            if model.backend == "vllm":  # vLLM runs one in-process engine at a time: free the other first
                self.keep_only([k for k in self._items if k[0] != "vllm"])
            backend = self._factory(model) if self._factory is not None else build_backend(model)
            self.loads += 1
            self._items[key] = backend
            while self.max_items is not None and len(self._items) > self.max_items:
                _, old = self._items.popitem(last=False)
                close_backend(old)
            return backend

    def __len__(self) -> int:
        return len(self._items)

    def keep_only(self, keys: Sequence[tuple]) -> None:
        """Drop (and close) every backend whose key is not in ``keys``."""
        wanted = set(keys)
        with self._lock:
            for key in [k for k in self._items if k not in wanted]:
                close_backend(self._items.pop(key))

    def clear(self) -> None:
        with self._lock:
            while self._items:
                close_backend(self._items.popitem()[1])


def close_backend(backend: Any) -> None:
    """Close a backend that has ``close`` (HTTP clients, engines); a failure is logged, never raised."""
    close = getattr(backend, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # closing a client must not fail a run
            log.debug("closing %r failed", backend, exc_info=True)
