"""Quickstart: the three verbs on your own video.

    python examples/quickstart.py VIDEO AUDIO [--workspace GaussianTalker] [--config 64_dim_1_transformer]
                                  [--iterations N] [--device auto]

VIDEO is a few minutes of one person talking to a static camera; AUDIO is what the person should say.
Without arguments it runs on the built-in example subject (scikit-image's astronaut photograph animated
into a short talking video, see ``gaussiantalker.demo``) with a short CPU configuration.

The same as the command line:
    gaussiantalker train --video_path VIDEO --config cpu_small
    gaussiantalker infer --model_dir <video stem> --audio_path AUDIO
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import gaussiantalker as gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", help="the training video (default: the built-in example)")
    parser.add_argument("audio", nargs="?", help="the audio to say (default: generated speech)")
    parser.add_argument("--workspace", default="GaussianTalker")
    parser.add_argument("--config", default="cpu_small", help="preset name or config file")
    parser.add_argument("--iterations", type=int, default=None, help="fine-stage iterations (default: the config's)")
    parser.add_argument("--device", default="auto", help="auto, CPU, GPU0, cuda:1, ...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # an application configures logging

    video, audio = args.video, args.audio
    if video is None:  # the built-in example subject
        from gaussiantalker.demo import make_demo_video

        Path(args.workspace).mkdir(parents=True, exist_ok=True)
        video = make_demo_video(Path(args.workspace) / "astronaut.mp4", seconds=8.0)
    if audio is None:
        from gaussiantalker.demo import make_demo_speech

        audio = make_demo_speech(Path(args.workspace) / "speech.wav", seconds=4.0, seed=1)

    # 1. preprocess: video -> dataset (<workspace>/data/<name>/); finished steps are re-used
    data = gt.preprocess(video, workspace=args.workspace, device=args.device)
    print(f"dataset {data.path}: {data.num_frames} frames, backends {data.backends}")

    # 2. train: dataset -> model (<workspace>/output/<name>/); resumes from the newest checkpoint
    model = gt.train(data, config=args.config, iterations=args.iterations, device=args.device)
    print(f"model {model.path} at iteration {model.iteration}, metrics {model.metrics}")

    # 3. render: model + audio -> mp4 with sound
    video_out = gt.render(model, audio, device=args.device)
    print(f"video {video_out.path}: {video_out.frames} frames at {video_out.fps:.1f} frames/s")


if __name__ == "__main__":
    main()
