"""Sharing safely, end to end: ``python app.py --auth-file ...`` in a subprocess, driven by chromium and raw HTTP.

Without the session cookie gradio's login page is all there is: no tab's content is in the page,
and the config, API-info, file, upload, queue and call endpoints answer 401. A wrong password is
refused; after logging in every tab opens. ``--host 0.0.0.0 --insecure`` starts without a login
and every page shows the warning banner.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from app_process import start_app, stop_app
from pages import new_page, open_app

pytestmark = pytest.mark.browser

USER, PASSWORD = "alice", "correct horse: battery staple"  # a colon inside: split at the first one only
OTHER_USER, OTHER_PASSWORD = "bob", "b0b-Pa55"
# Each tab and an element only its content holds.
TABS = {"Assemble": "#mf-yaml", "Train": "#mf-train-start", "Playground": "#mf-pg-n", "Runs": "#mf-runs-refresh"}


@pytest.fixture(scope="module")
def auth_app(workspace, tmp_path_factory) -> Iterator[str]:
    """The UI behind two logins: one from a chmod-600 ``--auth-file``, one from ``--auth``."""
    folder = tmp_path_factory.mktemp("auth-app")
    creds = folder / "ui-logins.txt"
    creds.write_text(f"# MemFactory UI logins\n\n{USER}:{PASSWORD}\n")
    creds.chmod(0o600)
    log_path = folder / "app.log"
    process, url = start_app(workspace, log_path,
                             ["--auth-file", str(creds), "--auth", f"{OTHER_USER}:{OTHER_PASSWORD}"])
    try:
        yield url
    finally:
        stop_app(process)
    log = log_path.read_text()
    assert PASSWORD not in log and OTHER_PASSWORD not in log  # never printed, not even by gradio


def _http(method: str, url: str, body: dict | None = None, cookie: str | None = None) -> tuple[int, str]:
    """One request with urllib (no browser, no cookie jar); the status and body, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if cookie:
        request.add_header("Cookie", cookie)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer in itself here
        return None


def _login_cookie(url: str, user: str, password: str) -> tuple[int, str]:
    """POST gradio's /login form; the status and the ``name=value`` cookies it set."""
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    request = urllib.request.Request(url + "login", data=form, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            cookies = [h.split(";", 1)[0] for h in response.headers.get_all("Set-Cookie") or []]
            return response.status, "; ".join(cookies)
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_without_a_login_no_tab_or_endpoint_answers(auth_app):
    base = auth_app.rstrip("/")
    # The page itself is only the login form: none of the tabs' content is in it.
    status, html = _http("GET", auth_app)
    assert status == 200 and '"auth_required":true' in html.replace(" ", "")
    for tab, selector in TABS.items():
        assert selector.lstrip("#") not in html, f"{tab}'s content is in the login page"

    # Logged in (the --auth-file login), the same endpoints answer: so the 401s below are the login's doing.
    status, cookie = _login_cookie(auth_app, USER, PASSWORD)
    assert status == 200 and "access-token" in cookie
    status, config = _http("GET", base + "/config", cookie=cookie)
    assert status == 200 and "mf-train-start" in config
    status, info = _http("GET", base + "/gradio_api/info", cookie=cookie)
    assert status == 200
    api_names = [name.lstrip("/") for name in json.loads(info)["named_endpoints"]]
    assert api_names, "the app should expose at least one named endpoint to probe"
    fn_index = 0

    get_paths = ["/config", "/gradio_api/info", "/gradio_api/openapi.json", "/gradio_api/login_check",
                 "/gradio_api/queue/status", "/gradio_api/queue/data?session_hash=abc", "/gradio_api/upload_progress",
                 "/gradio_api/file=README.md", "/gradio_api/file=/etc/passwd", "/gradio_api/file/README.md",
                 f"/gradio_api/call/{api_names[0]}/some-event", "/monitoring", "/gradio_api/deep_link?session_hash=abc"]
    post_paths = ["/gradio_api/queue/join", f"/gradio_api/run/{api_names[0]}", f"/gradio_api/call/{api_names[0]}",
                  f"/gradio_api/api/{api_names[0]}", "/gradio_api/upload", "/gradio_api/component_server"]
    body = {"data": [], "fn_index": fn_index, "session_hash": "abc", "event_data": None, "trigger_id": None}
    for path in get_paths:
        status, text = _http("GET", base + path)
        assert status == 401, (path, status, text[:200])
        assert "Not authenticated" in text
    for path in post_paths:
        status, text = _http("POST", base + path, body)
        assert status == 401, (path, status, text[:200])
    # A stale or forged cookie is no better than none.
    forged = cookie.replace("=", "=x", 1)
    assert _http("GET", base + "/config", cookie=forged)[0] == 401
    # Gradio's housekeeping routes stay open by design (the login page needs some); none of them
    # hands out the app's content: no component, tab or endpoint name.
    for path in ("/gradio_api/user", "/gradio_api/token", "/gradio_api/app_id", "/gradio_api/startup-events",
                 "/theme.css", "/manifest.json"):
        status, text = _http("GET", base + path)
        assert status == 200 and "mf-" not in text and api_names[0] not in text, (path, text[:200])
    # FastAPI's own schema and docs pages (outside gradio's login check) are switched off.
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert _http("GET", base + path)[0] == 404, path


def test_wrong_password_is_refused_and_a_login_opens_every_tab(browser, auth_app, tmp_path):
    assert _login_cookie(auth_app, USER, "wrong password")[0] == 400
    assert _login_cookie(auth_app, "mallory", PASSWORD)[0] == 400  # a password of another user's is no use
    assert _login_cookie(auth_app, OTHER_USER, PASSWORD)[0] == 400

    page = new_page(browser)
    try:
        page.goto(auth_app)
        page.wait_for_selector("input[type=password]")
        assert page.locator("#mf-tabs").count() == 0
        assert "MemFactory: sign in" in page.content()  # our auth_message on gradio's login page
        page.locator("input[type=text], input:not([type])").first.fill(USER)
        page.locator("input[type=password]").fill("not the password")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        assert page.locator("#mf-tabs").count() == 0

        page.locator("input[type=text], input:not([type])").first.fill(USER)  # the form clears itself
        page.locator("input[type=password]").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#mf-tabs")
        assert page.locator("#mf-insecure-banner").count() == 0  # a login: no warning
        for tab, selector in TABS.items():
            page.get_by_role("tab", name=tab).first.click()
            page.locator(selector).first.wait_for(state="visible")
    finally:
        page.close()


def test_insecure_on_every_interface_starts_with_a_banner(browser, workspace, tmp_path):
    process, url = start_app(workspace, tmp_path / "app.log", ["--host", "0.0.0.0", "--insecure"])
    try:
        page = new_page(browser)
        try:
            open_app(page, url)  # no login page
            banner = page.locator("#mf-insecure-banner")
            banner.wait_for(state="visible")
            text = banner.inner_text()
            assert "served without authentication on 0.0.0.0:" in text and "--auth" in text
            # Above the tabs, where nobody can miss it.
            assert banner.bounding_box()["y"] < page.locator("#mf-tabs").bounding_box()["y"]
        finally:
            page.close()
    finally:
        stop_app(process)
    assert "WARNING: serving the web UI WITHOUT a login" in (tmp_path / "app.log").read_text()
