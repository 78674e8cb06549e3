"""Shared pieces of the web application tests: a workspace with a tiny model, media files, a live server.

The model is the synthetic dataset's canonical Gaussians with random deformation heads
(``_infer_helpers.model_folder``): a real model folder that renders in milliseconds, so the tests exercise
the app, not training. One test trains for real (through the API) with a tiny config written here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `examples.webapp` is imported from the repository root
    sys.path.insert(0, str(REPO))

from _infer_helpers import model_folder, synthetic  # noqa: E402

#: The test client's address: the app answers only to its own loopback names (a DNS-rebinding defence).
BASE_URL = "http://127.0.0.1"
CHROMIUM = Path(os.environ.get("GT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
TINY_TRAIN = {"kplanes_config": {"output_coordinate_dim": 8, "resolution": [8, 8, 8]}, "d_model": 16,
              "net_width": 16, "ffn_hidden": 32, "max_points": 150, "tensorboard": False, "batch_size": 2,
              "coarse_iterations": 4, "iterations": 2, "resolution": -1}


def make_workspace(root: Path, model: str = "tiny") -> Path:
    """``root`` as a workspace: ``data/tiny`` (synthetic, 44 frames of 48 px) and ``output/<model>``."""
    dataset = synthetic(root)
    model_folder(dataset, root / "output" / model)
    return root


def write_tiny_config(configs_dir: Path, name: str = "tiny.json") -> Path:
    """A training config that trains both stages in a few iterations (seconds on a CPU)."""
    from gaussiantalker.config import load_config

    configs_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config("64_dim_1_transformer", **TINY_TRAIN)
    path = configs_dir / name
    path.write_text(cfg.to_json(), encoding="utf-8")
    return path


def ffmpeg(*args: str) -> None:
    from gaussiantalker.media import run_ffmpeg

    run_ffmpeg(["-y", "-loglevel", "error", *args])


def video_with_audio(path: Path, seconds: float = 1.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size=64x64:rate=25:duration={seconds}", "-f", "lavfi",
           "-i", f"sine=frequency=300:sample_rate=16000:duration={seconds}", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-c:a", "aac", "-shortest", str(path))
    return path


def video_without_audio(path: Path, seconds: float = 1.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size=64x64:rate=25:duration={seconds}", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path))
    return path


def tone_wav(path: Path, seconds: float = 1.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=16000:duration={seconds}", str(path))
    return path


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech_wav(path: Path, text: str = "hello world how are you today") -> Path:
    """Real speech for the ASR stage, spoken by espeak-ng."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > end or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def artifacts_dir(tmp_path_factory) -> Path:
    """Where screenshots go: ``$GT_TEST_ARTIFACTS/webapp`` when set, else a pytest temporary folder."""
    base = os.environ.get("GT_TEST_ARTIFACTS")
    folder = Path(base) / "webapp" if base else tmp_path_factory.mktemp("webapp_artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
