"""``memfactory serve``: an OpenAI-compatible HTTP server over a local model or a run's checkpoint."""

from __future__ import annotations

import argparse
import math
import os
import sys

from memfactory.errors import MemFactoryError
from memfactory.exposure import is_loopback

# memfactory.serve.protocol's defaults (kept equal by tests/test_serve_limits.py); not imported from there
# so that every other command does not pay for importing fastapi.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_QUEUE = 256
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_N = 16
DEFAULT_MAX_LOGPROBS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a local model or checkpoint over an OpenAI-compatible HTTP API",
        description="Serve a local model over /v1/chat/completions, /v1/completions and /v1/models, batching "
        "concurrent requests. "
        "Reach it with model.backend: openai, model.base_url: http://HOST:PORT/v1, model.path: NAME.",
    )
    parser.add_argument("--model", default="tiny://qwen3-mini",
                        help="local model folder, tiny://qwen3-mini or smollm2-135m-instruct (default: %(default)s)")
    parser.add_argument("--checkpoint", help="a run's checkpoint folder to load on top of --model")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                        help="hf = transformers; vllm = an in-process vLLM engine (`make vllm`, run from .venv-vllm) "
                        "(default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument("--name", help="served model name clients must send (default: the checkpoint folder or --model)")
    parser.add_argument("--max-batch", type=int, default=16, help="most requests run in one generate call (default: %(default)s)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long to wait for more requests to join a batch (default: %(default)s)")
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="require clients to send the key held in this environment variable "
                        "(Authorization: Bearer KEY) on every route but /health; needed beyond loopback")
    parser.add_argument("--insecure", action="store_true",
                        help="serve on a non-loopback --host WITHOUT an API key, on purpose")
    parser.add_argument("--max-context", type=int, metavar="TOKENS",
                        help="context prompts and max_tokens are checked against (default: the model's own, "
                        "e.g. 8192; at most that)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="BYTES",
                        help="larger request bodies are refused with 413 before they are read (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                        help="requests admitted at once, waiting or generating; the next gets 429 with "
                        "Retry-After (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, metavar="SECONDS",
                        help="each request's deadline; 504 after it, and a batch nobody waits for any more stops "
                        "at its next token (default: %(default)s)")
    parser.add_argument("--max-n", type=int, default=DEFAULT_MAX_N, metavar="N",
                        help="most choices per prompt (a request's n), sampled as one batch (default: %(default)s)")
    parser.add_argument("--max-logprobs", type=int, default=DEFAULT_MAX_LOGPROBS, metavar="K",
                        help="most alternatives per token (chat top_logprobs, completions logprobs) "
                        "(default: %(default)s)")
    parser.set_defaults(func=run)


def refusal_message(host: str, port: int) -> str:
    """Why ``serve`` will not start on ``host`` without a key, and the two ways to start it."""
    command = f"memfactory serve --host {host}" + (f" --port {port}" if port != 8000 else "")
    return (f"refusing to serve on {host} (not a loopback address) without an API key: anyone who can reach "
            "the port could use the model.\n"
            "Require a key: put it in an environment variable and name the variable, e.g.\n"
            f"  export MEMFACTORY_API_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\n"
            f"  {command} --api-key-env MEMFACTORY_API_KEY\n"
            "(clients send it as 'Authorization: Bearer <key>'; with model.backend: openai set "
            "model.api_key_env: MEMFACTORY_API_KEY)\n"
            f"or, to serve without a key on purpose: {command} --insecure")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise MemFactoryError(f"--port {args.port}: not a TCP port (0-65535)")
    if args.max_batch < 1:
        raise MemFactoryError(f"--max-batch {args.max_batch}: must be at least 1")
    if args.max_context is not None and args.max_context < 2:
        raise MemFactoryError(f"--max-context {args.max_context}: must be at least 2 tokens")
    if args.max_body_bytes < 1024:
        raise MemFactoryError(f"--max-body-bytes {args.max_body_bytes}: must be at least 1024")
    if args.max_queue < 1:
        raise MemFactoryError(f"--max-queue {args.max_queue}: must be at least 1")
    if args.max_n < 1:
        raise MemFactoryError(f"--max-n {args.max_n}: must be at least 1")
    if args.max_logprobs < 0:
        raise MemFactoryError(f"--max-logprobs {args.max_logprobs}: must be at least 0")
    if not (math.isfinite(args.request_timeout) and args.request_timeout > 0):
        raise MemFactoryError(f"--request-timeout {args.request_timeout}: must be a positive number of seconds")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise MemFactoryError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    if not api_key and not is_loopback(args.host):
        if not args.insecure:
            raise MemFactoryError(refusal_message(args.host, args.port))
        print(f"WARNING: serving on {args.host} WITHOUT an API key (--insecure): anyone who can reach this port "
              "can use the model", file=sys.stderr, flush=True)
    from memfactory.serve.server import serve  # after the checks: a refusal costs no fastapi import

    serve(args.model, args.host, args.port, checkpoint=args.checkpoint, name=args.name,
          max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, api_key=api_key,
          context_length=args.max_context, max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
          request_timeout_s=args.request_timeout, backend_name=args.backend, max_n=args.max_n,
          max_logprobs=args.max_logprobs)
    return 0
