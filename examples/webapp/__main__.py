"""``python -m examples.webapp`` (from the repository root): serve the web application.

    python -m examples.webapp [--host 127.0.0.1] [--port 8000] [--workspace GaussianTalker]
                              [--max-upload-mb 200] [--device auto] [--chat-config chat.toml]

Binds to 127.0.0.1 by default: the app has no authentication, so expose it only behind a proxy that adds it.
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
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from .app import create_app
    from .backend.settings import Settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(workspace=Path(args.workspace), max_upload_mb=args.max_upload_mb, device=args.device,
                        chat_config=args.chat_config)
    app = create_app(settings)
    print(f"gaussiantalker web app on http://{args.host}:{args.port}/  (workspace {settings.workspace})")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
