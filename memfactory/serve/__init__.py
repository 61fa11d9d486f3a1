"""An OpenAI-compatible HTTP server over any MemFactory backend (usually a local checkpoint).

``/v1/chat/completions`` and ``/v1/completions`` speak OpenAI's request and response shapes (``n``
choices, token log-probs, ``echo`` with the prompt's log-probs) plus vLLM's
``continue_final_message`` / ``add_generation_prompt`` / ``include_stop_str_in_output``
extensions, so ``OpenAIBackend``, any OpenAI client or lm-evaluation-harness can evaluate a
trained checkpoint.

Requests arriving within a few milliseconds of each other are collected by a small batching
queue and run as ONE ``backend.generate`` call on a worker thread (the HF backend pads on the
left and decodes them together), which is where the throughput of a local model comes from.
Requests with different sampling parameters are grouped, one generate call per group.

``stream: true`` returns OpenAI's SSE chunk format ending with ``data: [DONE]``. The backend
interface produces whole completions, so the chunks arrive once the completion is done: the
format works with streaming clients, but the first token is not any earlier.

The server is bounded, so one client cannot tie it up for everyone:

* a request body over ``max_body_bytes`` is refused with 413 before it is read;
* the prompt is counted in the model's tokens and refused with 400 when it does not fit the
  context (the message names both numbers); a prompt whose characters alone prove it too long is
  refused without tokenising it;
* ``max_tokens`` is refused with 400 when prompt + max_tokens exceeds the context (as OpenAI and
  vLLM do); without ``max_tokens`` the default is cut to what the context leaves;
* ``n`` is at most ``max_n``, ``top_logprobs`` / ``logprobs`` at most ``max_logprobs``, ``stop``
  holds at most 16 strings of at most 1,000 characters, numbers are finite;
* at most ``max_queue`` requests are admitted at once (waiting or generating); the next gets 429
  with ``Retry-After``;
* each request has a deadline (``request_timeout_s``, 504 after it); a batch whose requests have
  all passed their deadline or whose clients have all gone is interrupted at the next token;
* SIGTERM / Ctrl-C interrupt a running generation at the next token, answer every waiting request
  with 503, and the process exits within seconds.

Every error is JSON in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

With an API key (``memfactory serve --api-key-env VAR``, required beyond loopback) every route but
``/health`` answers 401 without ``Authorization: Bearer <key>``; the key is compared in constant
time, and ``/health`` without it says only whether the server is up.

The package, one module per job (each imports only the ones above it in this list):

* ``protocol``: OpenAI's request shapes, their mapping onto prompts + SamplingParams, stop strings
  and the limits (no web framework);
* ``responses``: OpenAI's response shapes, whole or streamed: choices, usage, log-probs;
* ``batcher``: the batching queue, its deadlines, interruption and statistics;
* ``app``: :func:`~memfactory.serve.app.create_app`, the routes over one ``ServerState``;
* ``server``: uvicorn around the app (``ServerThread`` for tests, ``serve`` for the CLI).
"""
