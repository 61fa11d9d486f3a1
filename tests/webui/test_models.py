"""The UI's model cache (webui.models): one load per model even when two browser tabs ask at once."""

from __future__ import annotations

import threading

from memfactory.config import ModelConfig
from webui.models import BackendCache, close_backend


def test_two_threads_asking_for_one_model_load_it_once():
    started, release = threading.Event(), threading.Event()

    def slow_load(model):
        started.set()
        release.wait(30)  # the second caller arrives while the first is still loading
        return object()

    cache = BackendCache(factory=slow_load)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(ModelConfig(path="a")))) for _ in range(2)]
    threads[0].start()
    assert started.wait(30)
    threads[1].start()
    release.set()
    for thread in threads:
        thread.join(30)
    assert cache.loads == 1 and len(got) == 2 and got[0] is got[1]


def test_closing_a_backend_that_fails_to_close_is_not_an_error():
    class Broken:
        closed = False

        def close(self):
            self.closed = True
            raise RuntimeError("socket already gone")

    broken = Broken()
    close_backend(broken)
    close_backend(object())  # nothing to close
    assert broken.closed
