"""How ``python app.py`` may be shared: its flags, the login credentials, and the refusal rule.

The web UI starts training subprocesses and reads and writes presets and files, so it never listens
beyond this machine (a non-loopback ``--host``, or ``--share``'s public link) without a login,
unless ``--insecure`` says so on purpose — and then every page carries a warning banner.

Credentials come from ``--auth USER:PASSWORD`` (repeatable), ``--auth-file FILE`` (one
``user:password`` a line) or the ``MEMFACTORY_UI_AUTH`` environment variable (one
``user:password``; unlike a command-line argument it does not show in ``ps``). Gradio's login
page asks for them; :class:`CredentialChecker` compares in constant time. Passwords are never
printed: error messages name the source and line, not the text.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from memfactory.errors import MemFactoryError
from memfactory.exposure import is_loopback, secret_equal

AUTH_ENV = "MEMFACTORY_UI_AUTH"


class AuthError(MemFactoryError):
    """Credentials that cannot be used, or a launch that would expose the UI without them."""


@dataclass(frozen=True)
class Credential:
    """One login; ``repr`` hides the password so that a traceback or log line cannot show it."""

    user: str
    password: str = field(repr=False)


def parse_credential(text: str, where: str) -> Credential:
    """``user:password`` (split at the first colon: a password may hold colons, a user name cannot).

    ``where`` names the source in the error (``--auth #2``, ``creds.txt line 3``); the text itself
    is never quoted back, since it holds a password.
    """
    user, sep, password = text.partition(":")
    user = user.strip()  # gradio strips the user name typed into its login form
    if not sep:
        raise AuthError(f"{where}: expected user:password (no ':' found)")
    if not user:
        raise AuthError(f"{where}: the user name before ':' is empty")
    if not password:
        raise AuthError(f"{where}: the password after ':' is empty")
    return Credential(user, password)


def load_auth_file(path: str | Path) -> tuple[list[Credential], list[str]]:
    """The credentials in ``path`` and any warnings about the file.

    One ``user:password`` a line; blank lines and lines starting with ``#`` are skipped; whitespace
    around a line is ignored. A file others can read (or write) is refused on POSIX, as ssh does
    with keys: ``chmod 600`` it. A group-readable file only warns.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuthError(f"--auth-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"--auth-file {path}: cannot read it ({type(exc).__name__}: {exc})") from None
    warnings: list[str] = []
    if os.name == "posix":
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise AuthError(f"--auth-file {path}: other users can read or write it "
                            f"(mode {stat.filemode(mode)}); run `chmod 600 {shlex.quote(str(path))}` first")
        if mode & (stat.S_IRGRP | stat.S_IWGRP):
            warnings.append(f"--auth-file {path}: its group can read it (mode {stat.filemode(mode)}); "
                            f"consider `chmod 600 {shlex.quote(str(path))}`")
    credentials: list[Credential] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        credentials.append(parse_credential(line, f"--auth-file {path} line {number}"))
    if not credentials:
        raise AuthError(f"--auth-file {path}: no user:password lines in it")
    return credentials, warnings


class CredentialChecker:
    """Gradio's ``launch(auth=...)`` callable: ``(user, password) -> bool``.

    Every stored login is compared, each with :func:`secret_equal`, and the results are combined
    without short-circuiting, so the time taken says nothing about which part was wrong.
    """

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self._credentials = tuple(credentials)
        if not self._credentials:
            raise ValueError("CredentialChecker needs at least one credential")

    @property
    def users(self) -> list[str]:
        return [c.user for c in self._credentials]

    def __call__(self, username: str, password: str) -> bool:
        ok = False
        for credential in self._credentials:
            ok |= secret_equal(username, credential.user) & secret_equal(password, credential.password)
        return ok

    def __repr__(self) -> str:
        return f"CredentialChecker(users={self.users!r})"


def collect_credentials(auth: list[str], auth_file: str | None,
                        environ: Mapping[str, str]) -> tuple[list[Credential], list[str]]:
    """Every login from ``--auth``, ``--auth-file`` and ``MEMFACTORY_UI_AUTH``, plus warnings.

    A user name given twice is an error (which password would count?).
    """
    credentials = [parse_credential(text, f"--auth #{i}") for i, text in enumerate(auth, 1)]
    warnings: list[str] = []
    if auth_file:
        from_file, warnings = load_auth_file(auth_file)
        credentials += from_file
    if environ.get(AUTH_ENV):
        credentials.append(parse_credential(environ[AUTH_ENV], f"${AUTH_ENV}"))
    seen: set[str] = set()
    for credential in credentials:
        if credential.user in seen:
            raise AuthError(f"the user {credential.user!r} is given more than once (--auth, --auth-file, ${AUTH_ENV})")
        seen.add(credential.user)
    return credentials, warnings


def exposure(host: str, share: bool) -> list[str]:
    """Why the UI would be reachable from other machines (empty: loopback only)."""
    reasons = []
    if not is_loopback(host):
        reasons.append(f"--host {host or '(every interface)'} is not a loopback address")
    if share:
        reasons.append("--share opens a public gradio.live link")
    return reasons


def banner_text(host: str, port: int, share: bool) -> str:
    """The warning shown at the top of every page of an ``--insecure`` UI."""
    where = f"{host or '0.0.0.0'}:{port}" + (" and a public gradio.live link" if share else "")
    return (f"⚠️ This workbench is served without authentication on {where}. Anyone who can reach it can "
            "start training runs and read and write presets and files. Restart it with "
            "--auth USER:PASSWORD or --auth-file FILE to require a login.")


def refusal_message(host: str, port: int, share: bool, reasons: list[str]) -> str:
    """What to type instead: the same command with a login, or with ``--insecure``."""
    base = ["python", "app.py", "--host", host]
    if port != 7860:
        base += ["--port", str(port)]
    if share:
        base.append("--share")
    command = shlex.join(base)
    why = "; ".join(reasons)
    return (
        f"refusing to start the web UI without a login: {why}. Anyone who could reach it could start "
        "training runs and read and write presets and files.\n"
        "Add a login (gradio shows a login page; passwords are never printed), one of:\n"
        f"  {command} --auth USER:PASSWORD          (repeatable, one per user)\n"
        f"  {command} --auth-file FILE              (one user:password a line, # comments; chmod 600 FILE)\n"
        f"  {AUTH_ENV}=USER:PASSWORD {command}   (keeps the password out of `ps`)\n"
        "or, to serve it open on purpose (every page then shows a warning banner):\n"
        f"  {command} --insecure"
    )


def build_parser() -> argparse.ArgumentParser:
    """``python app.py``'s flags."""
    parser = argparse.ArgumentParser(
        description="MemFactory web UI (LlamaBoard-style, for memory agents)",
        epilog="Listening beyond loopback (--host other than 127.0.0.1/::1/localhost, or --share) needs a login "
        f"(--auth, --auth-file or ${AUTH_ENV}) or an explicit --insecure.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s; "
                        "0.0.0.0 exposes it and then needs a login)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs a login)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                        help="require this login (repeatable); note that other local users can see arguments in "
                        f"`ps`: --auth-file or ${AUTH_ENV} keep it private")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="require one of the logins in FILE: one user:password a line, # comments, blank lines "
                        "ignored; refused when other users can read it")
    parser.add_argument("--insecure", action="store_true",
                        help="serve beyond loopback WITHOUT a login, on purpose; every page shows a warning banner")
    return parser


@dataclass
class LaunchPlan:
    """What ``app.py`` will do: where to listen, who may log in, and what to warn about."""

    host: str
    port: int
    share: bool
    auth: CredentialChecker | None = None
    banner: str | None = None  # shown at the top of every page (``--insecure`` beyond loopback)
    warnings: list[str] = field(default_factory=list)  # printed to stderr before starting


def plan_launch(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> LaunchPlan:
    """Parse ``app.py``'s arguments and decide; raises :class:`AuthError` for a refusal or bad credentials."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    if not 0 <= args.port <= 65535:
        raise AuthError(f"--port {args.port}: not a TCP port (0-65535)")
    credentials, warnings = collect_credentials(args.auth, args.auth_file, environ)
    plan = LaunchPlan(args.host, args.port, args.share, warnings=warnings)
    if credentials:
        plan.auth = CredentialChecker(credentials)
        if args.insecure:
            plan.warnings.append("--insecure has no effect: a login is required anyway")
        return plan
    reasons = exposure(args.host, args.share)
    if not reasons:
        return plan
    if not args.insecure:
        raise AuthError(refusal_message(args.host, args.port, args.share, reasons))
    plan.banner = banner_text(args.host, args.port, args.share)
    plan.warnings.append(f"WARNING: serving the web UI WITHOUT a login ({'; '.join(reasons)}), because of "
                         "--insecure: anyone who can reach it can start runs and read and write files")
    return plan
