"""``python app.py [--host 127.0.0.1] [--port 7860] [--share]``: the MemFactory web UI."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MemFactory web UI (LlamaBoard-style, for memory agents)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from webui.app import launch

    launch(args.host, args.port, args.share)


if __name__ == "__main__":
    main()
