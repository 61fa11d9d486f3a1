"""Running the app: uvicorn with a shutdown that stops the batcher first, a background
``ServerThread`` (tests, benchmarks, the web UI), and ``serve`` for ``memfactory serve``."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from memfactory.backends.base import Backend
from memfactory.backends.build import build_backend
from memfactory.backends.hf import HFBackend
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.serve.app import create_app
from memfactory.serve.batcher import Batcher
from memfactory.serve.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LOGPROBS,
    DEFAULT_MAX_N,
    DEFAULT_MAX_QUEUE,
    DEFAULT_REQUEST_TIMEOUT_S,
    model_context_length,
)
from memfactory.targets import with_checkpoint

DEFAULT_HOST = "127.0.0.1"
SHUTDOWN_GRACE_S = 5.0  # after SIGTERM, how long uvicorn waits for responses before cancelling them


def _batcher(app: FastAPI) -> Batcher | None:
    """The batcher of a ``create_app`` app (None for any other app a ServerThread runs)."""
    state = getattr(app.state, "server", None)
    return getattr(state, "batcher", None)


def make_server(app: FastAPI, **config: Any) -> Any:
    """A ``uvicorn.Server`` whose SIGTERM / Ctrl-C handler also stops the app's batcher at once:
    the running generation ends at its next token and every waiting request is answered 503, so
    uvicorn's graceful shutdown (at most ``SHUTDOWN_GRACE_S``) does not wait for generations."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            batcher = _batcher(app)
            if batcher is not None:
                batcher.begin_shutdown()  # sets an event only: safe in a signal handler
            super().handle_exit(sig, frame)

    config.setdefault("timeout_graceful_shutdown", SHUTDOWN_GRACE_S)
    return _Server(uvicorn.Config(app, **config))


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, benchmarks, the web UI).

    Binds the socket itself first, so ``port=0`` picks a free port with no race.
    """

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, *, log_level: str = "warning") -> None:
        self.app = app
        # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets whose proto is
        # IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = make_server(app, log_level=log_level, access_log=False, lifespan="on")
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="memfactory-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        batcher = _batcher(self.app)
        if batcher is not None:
            batcher.begin_shutdown()
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> ServerThread:  # noqa: PYI034 - py310 has no typing.Self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_backend(cfg_or_path: ModelConfig | str, checkpoint: str | None = None, backend: str = "hf") -> Backend:
    """A local backend (hf, or vllm) for a ModelConfig or a model path / built-in name, plus an optional checkpoint."""
    if isinstance(cfg_or_path, ModelConfig):
        cfg = cfg_or_path
        if checkpoint:
            cfg = with_checkpoint(cfg, checkpoint)
    else:
        cfg = ModelConfig(path=str(cfg_or_path), checkpoint=checkpoint, backend=backend)
    if cfg.backend not in ("hf", "vllm"):
        raise MemFactoryError(f"model.backend: serve loads a local model (backend hf or vllm), not {cfg.backend!r}")
    if cfg.checkpoint and not Path(cfg.checkpoint).is_dir():
        raise MemFactoryError(f"--checkpoint {cfg.checkpoint}: no such folder")
    return HFBackend.from_config(cfg) if cfg.backend == "hf" else build_backend(cfg)


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MemFactoryError(f"--host {host}: cannot resolve it ({exc})") from None
    family, type_, proto, _, address = infos[0]
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise MemFactoryError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port") from None


def serve(
    cfg_or_path: ModelConfig | str = "tiny://qwen3-mini",
    host: str = DEFAULT_HOST,
    port: int = 8000,
    *,
    checkpoint: str | None = None,
    name: str | None = None,
    max_batch: int = 16,
    batch_window_ms: float = 5.0,
    api_key: str | None = None,
    context_length: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    backend_name: str = "hf",
    max_n: int = DEFAULT_MAX_N,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
) -> None:
    """Load the model and serve it until SIGTERM / Ctrl-C (blocking); see :func:`create_app` for the limits."""
    _check_port_free(host, port)  # before the (slow) model load
    backend = load_backend(cfg_or_path, checkpoint, backend_name)
    detected = model_context_length(backend)
    if context_length and detected and context_length > detected:
        raise MemFactoryError(f"--max-context {context_length}: the model's context is {detected} tokens; "
                              "give at most that")
    path = cfg_or_path.path if isinstance(cfg_or_path, ModelConfig) else str(cfg_or_path)
    model_name = name or (checkpoint and Path(checkpoint).name) or path
    app = create_app(backend, model_name, max_batch=max_batch, batch_window_ms=batch_window_ms, api_key=api_key,
                     context_length=context_length, max_body_bytes=max_body_bytes, max_queue=max_queue,
                     request_timeout_s=request_timeout_s, max_n=max_n, max_logprobs=max_logprobs)
    context = app.state.server.context
    print(f"serving {model_name!r} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C to stop; "
          f"context {context or 'unknown'} tokens, body <= {max_body_bytes} bytes, queue <= {max_queue}, "
          f"deadline {request_timeout_s:g} s, n <= {max_n})", flush=True)
    make_server(app, host=host, port=port, log_level="info").run()
