"""``app.py``'s sharing rules in-process: credentials from flags, files and the environment; the refusal
beyond loopback without a login; ``--insecure``'s banner. Plus the real ``app.py`` refusing (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

from memfactory.exposure import is_loopback, secret_equal
from webui.sharing import (
    AUTH_ENV,
    AuthError,
    Credential,
    CredentialChecker,
    load_auth_file,
    parse_credential,
    plan_launch,
)

ROOT = Path(__file__).resolve().parents[2]
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def creds_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "logins.txt"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "::ffff:127.0.0.1", " 127.0.0.1 "])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.1", "example.com", "myhost",
                                  "127.0.0.1.nip.io", "0", "::ffff:10.0.0.1"])
def test_every_other_host_counts_as_exposed(host):
    assert not is_loopback(host)


def test_secret_equal_compares_whole_values():
    assert secret_equal("s3cret", "s3cret") and secret_equal(b"k", "k")
    assert not secret_equal("s3cret", "s3cre") and not secret_equal("s3cret", "s3cret ")
    assert not secret_equal("", "x") and secret_equal("", "")


def test_parse_credential_splits_at_the_first_colon_and_never_echoes():
    assert parse_credential("alice:pa:ss", "--auth #1") == Credential("alice", "pa:ss")
    assert parse_credential("  alice :pw", "x").user == "alice"  # gradio strips the typed user name
    for text, fragment in [("alice", "no ':' found"), (":pw-secret", "user name"), ("alice:", "password")]:
        with pytest.raises(AuthError, match=fragment) as info:
            parse_credential(text, "--auth #2")
        assert "--auth #2" in str(info.value) and "pw-secret" not in str(info.value)
    assert "pa:ss" not in repr(Credential("alice", "pa:ss"))  # a traceback cannot show it


def test_auth_file_skips_comments_and_blank_lines(tmp_path):
    path = creds_file(tmp_path, "# who may log in\n\nalice:one\n  bob:two:three  \n# carol:off\n")
    credentials, warnings = load_auth_file(path)
    assert credentials == [Credential("alice", "one"), Credential("bob", "two:three")]
    assert warnings == []


def test_a_malformed_line_names_the_file_and_line_not_the_text(tmp_path):
    path = creds_file(tmp_path, "alice:one\n# fine\nbob-without-password-hunter2\n")
    with pytest.raises(AuthError) as info:
        load_auth_file(path)
    assert f"{path} line 3" in str(info.value) and "hunter2" not in str(info.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    with pytest.raises(AuthError, match="no user:password lines"):
        load_auth_file(creds_file(tmp_path, "# nothing yet\n\n"))
    with pytest.raises(AuthError, match="no such file"):
        load_auth_file(tmp_path / "absent.txt")


@posix_only
def test_a_file_others_can_read_is_refused_and_a_group_readable_one_warns(tmp_path):
    path = creds_file(tmp_path, "alice:one\n", mode=0o644)
    with pytest.raises(AuthError, match="chmod 600") as info:
        load_auth_file(path)
    assert "-rw-r--r--" in str(info.value)
    path.chmod(0o640)
    credentials, warnings = load_auth_file(path)
    assert credentials == [Credential("alice", "one")]
    assert len(warnings) == 1 and "group can read it" in warnings[0]


def test_checker_accepts_exactly_the_stored_pairs():
    check = CredentialChecker([Credential("alice", "one"), Credential("bob", "two")])
    assert check("alice", "one") and check("bob", "two")
    assert not check("alice", "two") and not check("bob", "one")  # another user's password
    assert not check("alice", "one ") and not check("", "") and not check("carol", "one")
    assert "one" not in repr(check) and "two" not in repr(check) and "alice" in repr(check)
    with pytest.raises(ValueError):
        CredentialChecker([])


def test_loopback_without_a_login_starts_plain():
    plan = plan_launch(["--port", "7001"], environ={})
    assert (plan.host, plan.port, plan.share, plan.auth, plan.banner) == ("127.0.0.1", 7001, False, None, None)
    assert plan_launch(["--host", "::1"], environ={}).auth is None


@pytest.mark.parametrize("argv, why", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is not a loopback address"),
    (["--host", "192.168.1.5", "--port", "9000"], "--host 192.168.1.5 is not a loopback address"),
    (["--share"], "--share opens a public gradio.live link"),
])
def test_exposed_without_a_login_is_refused_with_the_ways_out(argv, why):
    with pytest.raises(AuthError) as info:
        plan_launch(argv, environ={})
    message = str(info.value)
    assert why in message
    command = "python app.py --host " + (argv[1] if argv[0] == "--host" else "127.0.0.1")
    assert f"{command}" in message
    for way in ("--auth USER:PASSWORD", "--auth-file FILE", f"{AUTH_ENV}=USER:PASSWORD", "--insecure"):
        assert way in message, way
    if "--port" in argv:
        assert "--port 9000" in message


def test_exposed_with_logins_from_every_source(tmp_path):
    path = creds_file(tmp_path, "alice:from-file\n")
    plan = plan_launch(["--host", "0.0.0.0", "--share", "--auth", "bob:from-flag", "--auth-file", str(path)],
                       environ={AUTH_ENV: "carol:from:env"})
    assert plan.banner is None and plan.warnings == []
    assert plan.auth is not None and plan.auth.users == ["bob", "alice", "carol"]
    assert plan.auth("alice", "from-file") and plan.auth("bob", "from-flag") and plan.auth("carol", "from:env")
    assert not plan.auth("alice", "from-flag")


def test_a_login_needs_no_exposure_and_makes_insecure_moot():
    plan = plan_launch(["--auth", "alice:pw", "--insecure"], environ={})
    assert plan.auth is not None and plan.auth("alice", "pw") and plan.banner is None
    assert any("--insecure has no effect" in w for w in plan.warnings)


def test_the_same_user_twice_is_an_error(tmp_path):
    with pytest.raises(AuthError, match="'alice' is given more than once"):
        plan_launch(["--auth", "alice:a", "--auth", "alice:b"], environ={})
    with pytest.raises(AuthError, match=f"\\${AUTH_ENV}: expected user:password"):
        plan_launch([], environ={AUTH_ENV: "no-colon"})


def test_insecure_starts_exposed_with_a_banner_and_a_warning():
    plan = plan_launch(["--host", "0.0.0.0", "--port", "7123", "--insecure"], environ={})
    assert plan.auth is None
    assert plan.banner is not None and "served without authentication on 0.0.0.0:7123" in plan.banner
    assert "--auth USER:PASSWORD" in plan.banner
    assert any("WITHOUT a login" in w for w in plan.warnings)
    shared = plan_launch(["--share", "--insecure"], environ={})
    assert shared.banner is not None and "gradio.live" in shared.banner


def test_the_banner_is_the_first_thing_in_the_page():
    from webui.app import build_app

    demo = build_app(banner="⚠️ served without authentication on <b>test-host</b>")
    first = demo.children[0]
    assert isinstance(first, gr.HTML) and first.elem_id == "mf-insecure-banner"
    assert "on &lt;b&gt;test-host&lt;/b&gt;" in first.value  # text, never markup
    plain = build_app()
    assert not any(getattr(b, "elem_id", None) == "mf-insecure-banner" for b in plain.blocks.values())


def _app_py(*args: str) -> subprocess.CompletedProcess:
    """The real ``python app.py ARGS`` (without any login from this shell's environment)."""
    environ = {k: v for k, v in os.environ.items() if k != AUTH_ENV}
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=60, env=environ)


def test_app_py_refuses_every_interface_without_a_login():
    done = _app_py("--host", "0.0.0.0", "--port", "7999")
    assert done.returncode == 2
    assert "refusing to start the web UI without a login" in done.stderr
    assert "python app.py --host 0.0.0.0 --port 7999 --auth USER:PASSWORD" in done.stderr
    assert "--auth-file FILE" in done.stderr and "--insecure" in done.stderr
    assert "Running on" not in done.stdout  # nothing was served


def test_app_py_refuses_share_and_bad_credentials_without_echoing_them(tmp_path):
    assert _app_py("--share").returncode == 2
    path = creds_file(tmp_path, "alice:ok\nbob hunter2\n")
    done = _app_py("--host", "0.0.0.0", "--auth-file", str(path))
    assert done.returncode == 2 and f"{path} line 2" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize("host, share", [("0.0.0.0", False), ("127.0.0.1", True)])
def test_launch_itself_refuses_so_the_python_api_cannot_bypass_app_py(host, share):
    from webui import launch

    with pytest.raises(AuthError, match="refusing to start the web UI without a login"):
        launch(host, 7998, share)  # raises before building or serving anything
