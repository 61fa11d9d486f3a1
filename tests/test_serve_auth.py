"""`memfactory serve`'s API key (issue 17, item 2): every route but ``/health`` needs it, compared in
constant time; a non-loopback ``--host`` without ``--api-key-env`` is refused (exit 2, says how)
unless ``--insecure``. Real uvicorn on 127.0.0.1 (in-process and as a ``memfactory serve`` subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from memfactory.cli import main as cli_main
from memfactory.serve.app import create_app
from memfactory.serve.server import ServerThread
from memfactory.tracking.process import free_port
from memfactory.types import ChatPrompt, Generation, SamplingParams

KEY = "sk-mf-4f1c9a7e2b6d8035-SECRET"
NAME = "reverse"


class ReverseBackend:
    """A real, deterministic Backend: answers each prompt's last user message reversed."""

    name = "reverse"
    exposes_tokens = False

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        return [Generation(text=p.messages[-1]["content"][::-1]) for p in prompts]


@pytest.fixture(scope="module")
def keyed():
    with ServerThread(create_app(ReverseBackend(), NAME, api_key=KEY)) as server:
        yield f"http://{server.host}:{server.port}"


CHAT = {"model": NAME, "messages": [{"role": "user", "content": "abc"}]}
ROUTES = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/docs"),
          ("GET", "/openapi.json"),
          ("GET", "/redoc"), ("GET", "/no/such/route"), ("GET", "/V1/models"), ("GET", "//v1/models"),
          ("GET", "/health/")]
WRONG = {
    "none": {},
    "wrong key": {"Authorization": "Bearer sk-wrong"},
    "key's prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
    "key plus a character": {"Authorization": f"Bearer {KEY}x"},
    "other scheme": {"Authorization": f"Basic {KEY}"},
    "bare key": {"Authorization": KEY},
    "empty bearer": {"Authorization": "Bearer"},
}


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("which", list(WRONG))
def test_every_route_but_health_needs_the_key(keyed, method, path, which):
    response = httpx.request(method, keyed + path, headers=WRONG[which], json=CHAT if method == "POST" else None)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and "Bearer" in error["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert KEY not in response.text


def test_the_key_opens_every_route(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    models = httpx.get(keyed + "/v1/models", headers=auth)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == NAME
    chat = httpx.post(keyed + "/v1/chat/completions", headers=auth, json=CHAT)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "cba"
    assert httpx.get(keyed + "/openapi.json", headers=auth).status_code == 200
    assert httpx.get(keyed + "/no/such/route", headers=auth).status_code == 404  # past the key, routing as usual
    # The scheme is case-insensitive (RFC 7235); extra spaces before the key are tolerated.
    assert httpx.get(keyed + "/v1/models", headers={"Authorization": f"bearer  {KEY}"}).status_code == 200


def test_health_says_only_up_or_down_without_the_key(keyed):
    public = httpx.get(keyed + "/health")
    assert public.status_code == 200 and public.json() == {"status": "ok"}
    full = httpx.get(keyed + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert full["status"] == "ok" and full["model"] == NAME and "load" in full and "limits" in full
    assert httpx.get(keyed + "/health", headers=WRONG["wrong key"]).json() == {"status": "ok"}


def test_without_a_key_everything_stays_open():
    with ServerThread(create_app(ReverseBackend(), NAME)) as server:
        base = f"http://{server.host}:{server.port}"
        assert httpx.get(base + "/v1/models").status_code == 200
        assert httpx.get(base + "/health").json()["model"] == NAME


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.7.7", "example.com"])
def test_cli_refuses_a_non_loopback_host_without_a_key(capsys, host):
    assert cli_main(["serve", "--host", host, "--port", "8011"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to serve on {host} (not a loopback address) without an API key" in err
    assert f"memfactory serve --host {host} --port 8011 --api-key-env MEMFACTORY_API_KEY" in err
    assert "Authorization: Bearer <key>" in err and f"memfactory serve --host {host} --port 8011 --insecure" in err


def test_cli_names_an_unset_key_variable(capsys, monkeypatch):
    monkeypatch.delenv("MF_TEST_UNSET_KEY", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--api-key-env", "MF_TEST_UNSET_KEY"]) == 2
    assert "MF_TEST_UNSET_KEY: that environment variable is not set" in capsys.readouterr().err


def _serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``memfactory serve --host 0.0.0.0 --port <free> ARGS`` on the tiny model; its loopback URL once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "memfactory", "serve", "--host", "0.0.0.0", "--port", str(port),
                             "--name", NAME, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"memfactory serve did not come up:\n{proc.communicate()[0]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        return proc.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_serve_refuses_every_interface_without_a_key_as_a_process():
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "memfactory", "serve", "--host", "0.0.0.0"], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert "--api-key-env MEMFACTORY_API_KEY" in done.stderr and "--insecure" in done.stderr
    assert "serving" not in done.stdout
    assert time.monotonic() - began < 30  # refused before any model is loaded


def test_serve_on_every_interface_with_a_key_guards_the_model():
    proc, base = _serve("--api-key-env", "MF_TEST_SERVE_KEY", env={"MF_TEST_SERVE_KEY": KEY})
    try:
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/health").json() == {"status": "ok"}
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(base + "/v1/models", headers=auth).json()["data"][0]["id"] == NAME
        body = {**CHAT, "max_tokens": 2, "temperature": 0}
        assert httpx.post(base + "/v1/chat/completions", json=body, timeout=60).status_code == 401
        answer = httpx.post(base + "/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        output = _stop(proc)
    assert KEY not in output and "WARNING" not in output


def test_serve_insecure_on_every_interface_starts_open_and_says_so():
    proc, base = _serve("--insecure")
    try:
        assert httpx.get(base + "/v1/models").status_code == 200
    finally:
        output = _stop(proc)
    assert "WARNING: serving on 0.0.0.0 WITHOUT an API key (--insecure)" in output
