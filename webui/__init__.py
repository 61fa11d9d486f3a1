"""MemFactory's web UI (Gradio): ``from webui import build_app, launch``."""

from __future__ import annotations


def build_app():
    from webui.app import build_app as build  # deferred: importing the app imports gradio and every tab

    return build()


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, *, auth=None, insecure: bool = False) -> None:
    """See :func:`webui.app.launch`: beyond loopback it needs ``auth`` (or ``insecure=True``)."""
    from webui.app import launch as run  # deferred: importing the app imports gradio and every tab

    run(host, port, share, auth=auth, insecure=insecure)
