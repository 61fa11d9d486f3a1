"""``python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth USER:PASSWORD | --auth-file FILE] [--insecure]``.

The MemFactory web UI. Beyond loopback it needs a login or an explicit ``--insecure``
(see ``webui/sharing.py``); a refusal exits with code 2 and says what to add.
"""

from __future__ import annotations

import os
import sys

from webui.sharing import AuthError, plan_launch


def main(argv: list[str] | None = None) -> int:
    try:
        plan = plan_launch(argv)
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in plan.warnings:
        print(warning, file=sys.stderr, flush=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from webui.app import launch

    launch(plan.host, plan.port, plan.share, auth=plan.auth, insecure=plan.banner is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
