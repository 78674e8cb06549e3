"""Measure the chat page's latency: request -> first rendered frame -> first playable piece -> whole reply video,
and a plain generation job's request -> playable video, in process through the JSON API.

    python -m examples.webapp.measure_latency --workspace GaussianTalker --model May   # a trained model
    python -m examples.webapp.measure_latency --synthetic 512                           # no model at hand

``--synthetic SIZE`` builds a stand-in model the size of a real one: a synthetic dataset of SIZE x SIZE
frames with 8,000 points and the ``--config`` network (default ``cpu_small``, which renders 256 x 256) with
untrained deformation heads, so rendering costs about what a trained model of that preset costs (the pixels
are not a face; a trained model's Gaussian count can differ after densification).
The speech is spoken by espeak-ng; the reply is the echo of what pocketsphinx recognised.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _synthetic_workspace(root: Path, size: int, config: str) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from _infer_helpers import model_folder, synthetic

    dataset = synthetic(root, name="stand_in", size=size, num_points=8000, num_frames=50)
    model_folder(dataset, root / "output" / "stand_in", config=config)
    return "stand_in"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--synthetic", type=int, default=None, metavar="SIZE")
    p.add_argument("--config", default="cpu_small", help="preset of the --synthetic stand-in (its resolution must "
                   "be SIZE: 256 for cpu_small, 512 for 64_dim_1_transformer)")
    p.add_argument("--device", default="auto")
    p.add_argument("--text", default="hello there, I would like to know how the weather will be tomorrow")
    p.add_argument("--turns", type=int, default=2, help="chat turns (the first one includes loading the model)")
    args = p.parse_args()
    from fastapi.testclient import TestClient

    from .app import create_app
    from .backend.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="gt_latency_"))
    try:
        ws, model = args.workspace, args.model
        if args.synthetic:
            ws, model = tmp, _synthetic_workspace(tmp, args.synthetic, args.config)
        if ws is None or model is None:
            p.error("give --workspace and --model, or --synthetic SIZE")
        speech = tmp / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(speech), args.text], check=True, capture_output=True)
        app = create_app(Settings(workspace=ws, device=args.device))
        results = []
        with TestClient(app, base_url="http://127.0.0.1") as c:  # the app answers only to its own names
            time.sleep(2.0)  # let the ASR pre-load finish, as on a server that has been up a while
            audio = c.post("/api/uploads", params={"kind": "audio", "filename": "speech.wav"},
                           content=speech.read_bytes()).json()["id"]
            for turn in range(args.turns):
                job = c.post("/api/chat", json={"model": model, "audio": audio, "mode": "echo"}).json()
                done = app.state.jobs.wait(job["id"], timeout=3600)
                if done.state != "done":
                    raise SystemExit(f"chat turn failed: {done.error}")
                results.append({"turn": turn, "frames": done.result["frames"], **done.result["timings"]})
            t0 = time.time()
            job = c.post("/api/generate", json={"model": model, "audio": audio, "batch_size": 32}).json()
            done = app.state.jobs.wait(job["id"], timeout=3600)
            results.append({"generate_to_playable_video": round(time.time() - t0, 3),
                            "render_seconds": done.result.get("seconds"), "frames": done.result.get("frames")})
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
