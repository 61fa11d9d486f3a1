"""The web UI: one ``gr.Blocks`` with a locale switch and one tab per module in ``webui/tabs/``.

A tab that fails to import or build (say, a half-finished component) becomes a tab showing the
error instead of taking the whole UI down.
"""

from __future__ import annotations

import html
import importlib
import logging
import pkgutil
import traceback
from collections.abc import Callable

import gradio as gr

from memfactory.paths import assets_dir
from webui import tabs
from webui.i18n import LOCALES, Labels, t
from webui.sharing import AuthError, banner_text, exposure, refusal_message
from webui.tabs import UIContext

log = logging.getLogger(__name__)
_BANNER_STYLE = ("background:#fde68a;color:#7c2d12;border:2px solid #d97706;border-radius:6px;padding:10px 14px;"
                 "font-weight:600")


def tab_modules() -> list:
    """Modules under ``webui/tabs/`` that define ``build(ctx)``, ordered by their ``ORDER``."""
    modules, failures = [], []
    for info in pkgutil.iter_modules(tabs.__path__):
        try:
            module = importlib.import_module(f"webui.tabs.{info.name}")
        except Exception:  # noqa: BLE001 - shown in the UI, the other tabs still work
            failures.append((info.name, traceback.format_exc()))
            continue
        if hasattr(module, "build"):
            modules.append(module)
    modules.sort(key=lambda m: (getattr(m, "ORDER", 100), m.__name__))
    return modules + [_failed_tab(name, text) for name, text in failures]


class _failed_tab:  # a stand-in module whose build() shows the import error
    def __init__(self, name: str, text: str) -> None:
        self.__name__, self.text = name, text

    def build(self, ctx: UIContext) -> None:
        raise RuntimeError(self.text)


def build_app(banner: str | None = None) -> gr.Blocks:
    """The whole UI (not launched): tabs discovered from ``webui/tabs/``.

    ``banner``: a warning shown above everything (``app.py --insecure`` beyond loopback).
    """
    labels = Labels()
    with gr.Blocks(title="MemFactory", delete_cache=(3600, 3600)) as demo:
        if banner:  # plain text, escaped; styled inline so that no stylesheet can hide it
            gr.HTML(f'<div role="alert" style="{_BANNER_STYLE}">{html.escape(banner)}</div>', elem_id="mf-insecure-banner")
        with gr.Row(equal_height=True):
            title = gr.Markdown(t("title"), elem_id="mf-title")
            labels.add(title, "title", "value")
            lang = gr.Dropdown(choices=[(name, code) for code, name in LOCALES.items()], value="en",
                               label=t("lang"), elem_id="mf-lang", scale=0, min_width=140)
            labels.add(lang, "lang")
        ctx = UIContext(demo=demo, labels=labels, lang=lang)
        with gr.Tabs(elem_id="mf-tabs") as tabs:
            ctx.shared["tabs"] = tabs  # a handler returning gr.Tabs(selected=<tab id>) switches tab
            for module in tab_modules():
                try:
                    module.build(ctx)
                except Exception as exc:
                    log.exception("tab %s failed", module.__name__)
                    name = module.__name__.rsplit(".", 1)[-1]
                    with gr.Tab(f"⚠️ {name}"):
                        gr.Markdown(f"This tab failed to load:\n\n```\n{exc}\n```")
        # Tabs first: the frontend registers a tab under its index among *all* children of gr.Tabs, but lists
        # the tab bar by its index among the tabs alone; a gr.State a tab creates outside its gr.Tab shifts the
        # two apart, and the clicked tab's button then shows twice.
        tabs.children.sort(key=lambda child: not isinstance(child, gr.Tab))
        lang.change(labels.updates, lang, labels.components, show_progress="hidden")
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, *,
           auth: Callable[[str, str], bool] | None = None, insecure: bool = False) -> None:
    """Serve the UI (blocking). ``auth``: gradio's login check (``webui.sharing.CredentialChecker``).

    Beyond loopback (or with ``share``) it needs ``auth``, or ``insecure=True`` which adds the warning
    banner; the rule lives here too so that ``from webui import launch`` cannot bypass ``app.py``'s.
    """
    banner = None
    reasons = exposure(host, share)
    if reasons and auth is None:
        if not insecure:
            raise AuthError(refusal_message(host, port, share, reasons))
        banner = banner_text(host, port, share)
    demo = build_app(banner)
    css = assets_dir() / "style.css"
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=gr.themes.Soft(),
        css_paths=[css] if css.is_file() else None,
        footer_links=["api", "settings"],
        auth=auth,
        auth_message="MemFactory: sign in with a login given to app.py (--auth / --auth-file)." if auth else None,
        # FastAPI's own /openapi.json and /docs sit outside gradio's login check; gradio's API page
        # (/gradio_api/info, /gradio_api/openapi.json) stays, behind the login.
        app_kwargs={"openapi_url": None, "docs_url": None, "redoc_url": None},
    )
