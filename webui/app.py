"""The web UI: one ``gr.Blocks`` with a locale switch and the tabs of :data:`TABS`, in that order.

Each tab is a package (``webui/<tab>/``: ``tab.py`` draws and wires, the other modules hold its
Gradio-free logic). A tab whose ``build`` fails (say, a half-finished component) becomes a tab
showing the error instead of taking the whole UI down.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

import gradio as gr

from memfactory.paths import assets_dir
from webui.assemble import tab as assemble
from webui.chat import tab as chat
from webui.export import tab as export
from webui.i18n import LOCALES, Labels, t
from webui.playground import tab as playground
from webui.runs import tab as runs
from webui.sharing import AuthError, banner_text, exposure, refusal_message
from webui.state import Shared, UIContext
from webui.train import tab as train

log = logging.getLogger(__name__)
_BANNER_STYLE = ("background:#fde68a;color:#7c2d12;border:2px solid #d97706;border-radius:6px;padding:10px 14px;"
                 "font-weight:600")


# The tabs, in order. A tab reads from ``ctx.shared`` only what a tab before it lends (webui.state.Shared):
# Assemble lends its saved-presets dropdown (read by Train) and its form (read by Runs: "open in Assemble").
TABS: tuple[tuple[str, Callable[[UIContext], None]], ...] = (
    ("assemble", assemble.build),
    ("train", train.build),
    ("playground", playground.build),
    ("chat", chat.build),
    ("export", export.build),
    ("runs", runs.build),
)


def build_app(banner: str | None = None) -> gr.Blocks:
    """The whole UI (not launched): the tabs of :data:`TABS`.

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
        with gr.Tabs(elem_id="mf-tabs") as tabs:
            ctx = UIContext(demo=demo, labels=labels, lang=lang, shared=Shared(tabs=tabs))
            for name, build in TABS:
                try:
                    build(ctx)
                except Exception as exc:
                    log.exception("tab %s failed", name)
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
