"""``python -m examples.webapp`` (from the repository root): serve the web application.

    python -m examples.webapp [--host 127.0.0.1] [--port 8000] [--workspace GaussianTalker]
                              [--max-upload-mb 200] [--device auto] [--chat-config chat.toml]

Binds to 127.0.0.1 by default. Requests must name this server in their Host header and come from its own
pages (docs/webapp.md, "Security"). To bind to another address, set a token: ``GT_WEBAPP_TOKEN=<secret>``
(then open ``http://HOST:PORT/?token=<secret>`` once) and name the host the browser uses with
``--allowed-host``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.webapp", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workspace", default="GaussianTalker", help="the library's workspace folder")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload in MiB")
    p.add_argument("--device", default="auto", help="device for video generation and chat replies")
    p.add_argument("--chat-config", type=Path, default=None, help="JSON/TOML file with asr, llm, tts tables")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the browser uses to reach this server besides 127.0.0.1/localhost (repeat)")
    p.add_argument("--retention-days", type=float, default=7.0,
                   help="delete uploads and rendered videos older than this (default 7; 0: never)")
    p.add_argument("--quota-mb", type=float, default=10240.0,
                   help="keep uploads plus rendered videos under this many MiB, oldest deleted first "
                        "(default 10240; 0: no quota)")
    p.add_argument("--max-live-sessions", type=int, default=2,
                   help="live (WebRTC) conversations at once; the next is refused until one closes (default 2)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from .app import create_app
    from .backend.settings import Settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .backend.security import is_loopback

    hosts = list(args.allowed_host)
    if not is_loopback(args.host):
        if args.host not in ("0.0.0.0", "::"):
            hosts.append(args.host)
    settings = Settings(workspace=Path(args.workspace), max_upload_mb=args.max_upload_mb, device=args.device,
                        chat_config=args.chat_config, allowed_hosts=tuple(hosts),
                        retention_days=args.retention_days, storage_quota_mb=args.quota_mb,
                        max_live_sessions=args.max_live_sessions)
    if not is_loopback(args.host) and not settings.token:
        print(f"refusing to bind to {args.host}: the app has no other protection there; set GT_WEBAPP_TOKEN to a "
              "secret (and --allowed-host to the name the browser uses), or bind to 127.0.0.1")
        return 2
    app = create_app(settings)
    hint = "?token=<GT_WEBAPP_TOKEN>" if settings.token else ""
    print(f"gaussiantalker web app on http://{args.host}:{args.port}/{hint}  (workspace {settings.workspace})")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
