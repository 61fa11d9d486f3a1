"""A backend that talks to any OpenAI-compatible chat server (vLLM, SGLang, Ollama, OpenAI,
or ``memfactory serve``).

Text only: such servers do not hand back the sampled token ids, so this backend is for
evaluation, playground chats and judges, not for GRPO rollouts (``exposes_tokens`` is False).

Two conventions callers must know:

* ``ChatPrompt.assistant_prefix`` is sent as a final assistant message with
  ``continue_final_message: true`` and ``add_generation_prompt: false`` — vLLM's (and
  ``memfactory serve``'s) extension. OpenAI's own API does not continue a prefix; there the
  prefix arrives as an ordinary finished assistant turn. The returned ``Generation.text`` is the
  continuation only: the prefix is NOT prepended (callers add it themselves, exactly as with the
  local ``hf`` backend).
* Stop strings: OpenAI's API cuts the stop string off the text; MemFactory keeps it. When the
  server says which string stopped it (``stop_reason``, as vLLM and ``memfactory serve`` do), the
  string is put back so results match the local backend. OpenAI's API does not report it.

A batch that repeats a prompt (a GRPO group, avg@k) asks for all its copies in ONE request with
``n`` (``use_n``, on by default), which vLLM and ``memfactory serve`` sample as one batch with the
prompt prefilled once. A server that refuses ``n`` > 1 (a 400 naming ``n``) or answers with fewer
choices is asked once per copy from then on.

The API key is read from the environment (``ModelConfig.api_key_env``), never stored in presets,
and masked in ``repr`` and in every error message.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends.streaming import OnText
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.types import ChatPrompt, Generation, SamplingParams

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class OpenAIOptions(BaseModel):
    """Client options; the endpoint, served model name and key variable come from ``model``."""

    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one response")
    max_retries: int = Field(4, ge=0, description="Retries on 429/5xx and connection errors (exponential back-off)")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once")
    use_n: bool = Field(True, description="Ask for the copies of a repeated prompt in one request (n); "
                        "falls back to one request per copy where the server does not support n")


def normalise_base_url(base_url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL that already has a path is kept."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MemFactoryError(f"model.base_url: {base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def _names_n(response: httpx.Response) -> bool:
    """Whether an error response is about the ``n`` field (OpenAI's ``param``, or its message)."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return False
    if not isinstance(error, dict):
        return False
    message = str(error.get("message", ""))
    return error.get("param") == "n" or message.startswith("n:") or "'n'" in message or " n=" in message


class _RefusedN(MemFactoryError):
    """The server refused a request for its ``n``: ask once per copy instead."""


class _Aborted(Exception):
    """Another request of the same batch failed for good; stop retrying."""


@register(
    "backend",
    "openai",
    description="Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, OpenAI, memfactory serve); text only",
    config=OpenAIOptions,
)
class OpenAIBackend:
    """Chat completions over HTTP with bounded concurrency, retries and clear errors."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 4,
        concurrency: int = 8,
        name: str = "openai",
        backoff_s: float = 0.5,
        api_key_env: str | None = None,
        use_n: bool = True,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.name = name
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = max(1, int(concurrency))
        self.backoff_s = float(backoff_s)
        self.use_n = use_n
        self.n_supported: bool | None = None  # learnt from the server: None until a request with n > 1
        self._api_key = api_key or None
        self._api_key_env = api_key_env
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.Client(headers=headers, timeout=self.timeout, limits=limits)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: ModelConfig, **options: Any) -> OpenAIBackend:
        """``model.base_url`` is the endpoint, ``model.path`` the served model name, the key comes
        from the environment variable ``model.api_key_env`` (absent is fine for local servers)."""
        if not cfg.base_url:
            raise MemFactoryError(
                "model.base_url: the openai backend needs the server's URL, e.g. http://127.0.0.1:8000/v1"
            )
        opts = OpenAIOptions.model_validate(options)
        return cls(
            cfg.base_url,
            cfg.path,
            api_key=os.environ.get(cfg.api_key_env) or None,
            api_key_env=cfg.api_key_env,
            timeout=opts.timeout,
            max_retries=opts.max_retries,
            concurrency=opts.concurrency,
            use_n=opts.use_n,
        )

    # ------------------------------------------------------------------ protocol

    @property
    def exposes_tokens(self) -> bool:
        return False

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        """One completion per prompt, in order; up to ``concurrency`` requests in flight, one per
        distinct prompt while the server takes ``n``."""
        if not prompts:
            return []
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            key = json.dumps([prompt.messages, prompt.assistant_prefix]) if self.use_n and self.n_supported is not False else str(i)
            groups.setdefault(key, []).append(i)
        units = [(prompts[rows[0]], rows) for rows in groups.values()]
        out: list[Generation | None] = [None] * len(prompts)
        if len(units) == 1:
            answers = [self._samples(units[0][0], params, len(units[0][1]), threading.Event())]
        else:
            answers = self._concurrently([(prompt, len(rows)) for prompt, rows in units], params)
        for (_, rows), gens in zip(units, answers):
            for i, gen in zip(rows, gens):
                out[i] = gen
        return [gen for gen in out if gen is not None]

    def _concurrently(self, units: list[tuple[ChatPrompt, int]], params: SamplingParams) -> list[list[Generation]]:
        abort = threading.Event()
        pool = self._executor()
        futures = [pool.submit(self._samples, p, params, n, abort) for p, n in units]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None and not isinstance(f.exception(), _Aborted)]
        if failed:
            abort.set()  # the others stop retrying at their next back-off
            for f in futures:
                f.cancel()
            raise failed[0].exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def _samples(self, prompt: ChatPrompt, params: SamplingParams, n: int, abort: threading.Event) -> list[Generation]:
        """``n`` completions of one prompt: one request with ``n`` where the server takes it, else one each."""
        gens: list[Generation] = []
        if n > 1 and self.n_supported is not False:
            try:
                gens = self._complete(prompt, params, abort, n)
            except _RefusedN:
                self.n_supported = False
            else:
                self.n_supported = len(gens) >= n  # a server that ignores n answers with one choice
        while len(gens) < n:
            gens += self._complete(prompt, params, abort, 1)
        return gens[:n]

    # ------------------------------------------------------------------ extras

    def list_models(self) -> list[str]:
        """Model ids the server offers (``GET /v1/models``)."""
        response = self._request("GET", "/models", None, threading.Event())
        return [m["id"] for m in response.json().get("data", [])]

    def stream(self, prompt: ChatPrompt, params: SamplingParams) -> Iterator[str]:
        """Yield text pieces as the server streams them (for chat UIs); no retries mid-stream."""
        for choice in self._stream_choices(prompt, params):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield piece

    def generate_streaming(self, prompt: ChatPrompt, params: SamplingParams, on_text: OnText) -> Generation:
        """One completion streamed, ``on_text`` called with the text so far at each piece; the Generation
        is ``generate``'s (the stop string kept, the finish reason). ``on_text`` may raise: the stream closes."""
        start = time.perf_counter()
        text, finish, stop_reason = "", None, None
        for choice in self._stream_choices(prompt, params):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                text += piece
                on_text(text)
            finish = choice.get("finish_reason") or finish
            stop_reason = choice.get("stop_reason") or stop_reason
        return self._generation(text, finish, stop_reason, params, time.perf_counter() - start)

    def _stream_choices(self, prompt: ChatPrompt, params: SamplingParams) -> Iterator[dict[str, Any]]:
        """The choices of each server-sent chunk of one streamed completion."""
        body = self._body(prompt, params)
        body["stream"] = True
        url = self.base_url + "/chat/completions"
        try:
            with self._client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._http_error(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        choices = json.loads(data).get("choices", [])
                    except (ValueError, AttributeError):
                        raise MemFactoryError(f"{url} streamed something that is not a chat completion chunk: "
                                              f"{self._redact(data[:300])!r}") from None
                    yield from choices
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIBackend:  # noqa: PYI034 - py310 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ internals

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-http")
            return self._pool

    def _body(self, prompt: ChatPrompt, params: SamplingParams, n: int = 1) -> dict[str, Any]:
        messages = [dict(m) for m in prompt.messages]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": max(0.0, params.temperature),
            "top_p": params.top_p,
            "n": n,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.top_k > 0:
            body["top_k"] = params.top_k  # vLLM/SGLang extension; omitted when off so OpenAI accepts the body
        if prompt.assistant_prefix:
            messages.append({"role": "assistant", "content": prompt.assistant_prefix})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def _complete(self, prompt: ChatPrompt, params: SamplingParams, abort: threading.Event, n: int = 1) -> list[Generation]:
        """The choices of one request for ``n`` completions (a server may give fewer)."""
        start = time.perf_counter()
        response = self._request("POST", "/chat/completions", self._body(prompt, params, n), abort)
        try:
            choices = sorted(response.json()["choices"], key=lambda c: c.get("index", 0))
            texts = [(c.get("message") or {}).get("content") or "" for c in choices]
            if not choices:
                raise IndexError
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise MemFactoryError(
                f"{self.base_url}/chat/completions returned something that is not a chat completion: "
                f"{self._redact(response.text[:300])!r}"
            ) from None
        latency = time.perf_counter() - start
        return [self._generation(text, c.get("finish_reason"), c.get("stop_reason"), params, latency)
                for c, text in zip(choices, texts)]

    @staticmethod
    def _generation(text: str, finish_reason: Any, stop_reason: Any, params: SamplingParams, latency: float) -> Generation:
        if isinstance(stop_reason, str) and stop_reason in params.stop and not text.endswith(stop_reason):
            text += stop_reason  # MemFactory keeps the stop string, OpenAI's API drops it
        finish = "length" if finish_reason == "length" else "stop"
        return Generation(text=text, finish_reason=finish, latency_s=latency)

    def _request(self, method: str, path: str, body: dict[str, Any] | None, abort: threading.Event) -> httpx.Response:
        url = self.base_url + path
        attempt = 0
        while True:
            if abort.is_set():
                raise _Aborted()
            try:
                response = self._client.request(method, url, json=body)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise self._transport_error(exc) from None
                delay = self._delay(attempt, None)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUS or attempt >= self.max_retries:
                    raise self._http_error(response, attempts=attempt + 1)
                delay = self._delay(attempt, response.headers.get("retry-after"))
            attempt += 1
            if abort.wait(delay):
                raise _Aborted()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(MAX_BACKOFF_S, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = self.backoff_s * (2**attempt)
        return min(MAX_BACKOFF_S, base * (0.75 + 0.5 * random.random()))  # jitter: don't retry in lock-step

    def _transport_error(self, exc: httpx.TransportError) -> MemFactoryError:
        tries = f" after {self.max_retries + 1} attempts" if self.max_retries else ""
        if isinstance(exc, httpx.ConnectError):
            why = str(exc).lower()
            reason = "connection refused" if "refused" in why or "errno 111" in why else f"cannot connect ({exc})"
            return MemFactoryError(
                self._redact(f"cannot reach {self.base_url} : {reason}; is the server running?{tries}")
            )
        if isinstance(exc, httpx.TimeoutException):
            return MemFactoryError(
                self._redact(f"{self.base_url} did not answer within {self.timeout:g} s{tries}; "
                             "raise the timeout or check the server's load")
            )
        return MemFactoryError(self._redact(f"HTTP error talking to {self.base_url}{tries}: {exc}"))

    def _http_error(self, response: httpx.Response, attempts: int = 1) -> MemFactoryError:
        status = response.status_code
        try:
            detail = response.json().get("error", {}).get("message") or response.text
        except (ValueError, AttributeError):
            detail = response.text
        detail = str(detail)[:500]
        where = f"{response.request.method} {response.request.url}"
        if status in (401, 403):
            hint = (
                f"; check the API key in ${self._api_key_env}" if self._api_key_env else "; check the API key"
            )
        elif status == 404:
            hint = f"; is {self.model!r} the served model name (see list_models()) and the URL right?"
        elif status in (400, 422) and ("continue_final_message" in detail or "add_generation_prompt" in detail):
            hint = ("; this server does not continue an assistant prefix (vLLM's continue_final_message "
                    "extension; OpenAI's own API lacks it): drop ChatPrompt.assistant_prefix for this endpoint")
        elif status in RETRY_STATUS:
            hint = f" (gave up after {attempts} attempts)"
        else:
            hint = ""
        kind = _RefusedN if status in (400, 422) and _names_n(response) else MemFactoryError
        return kind(self._redact(f"{where} failed with HTTP {status}: {detail}{hint}"))

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text
