"""Embedding the library in an application: load a model once, render many clips, stream frames.

    python examples/embed_in_app.py MODEL_DIR AUDIO [AUDIO ...] [--out renders] [--device auto]

MODEL_DIR is a trained model folder (``<workspace>/output/<name>``, e.g. from ``gaussiantalker train`` or
``gaussiantalker demo``). The script shows the three ways an app uses a loaded model:

1. ``talker.render(audio, out=...)``: one mp4 with sound per request (a web back end);
2. ``talker.stream(chunks)``: frames while the audio is still arriving (a chat loop:
   ASR -> LLM -> TTS -> frames), here fed with 20 ms chunks as a TTS engine would produce them;
3. ``talker.frames(audio)``: the frames as arrays, for an app that composites or encodes them itself.

Loading reads the weights and the dataset's poses and backgrounds once; every render after that only
runs the network and the rasterizer.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np

import gaussiantalker as gt
from gaussiantalker.audio import SAMPLE_RATE, load_audio


def chunks_of(samples: np.ndarray, seconds: float = 0.02) -> Iterator[np.ndarray]:
    """Split ``[T]`` float32 samples at 16 kHz into chunks of ``seconds`` (what a TTS engine would emit)."""
    step = int(seconds * SAMPLE_RATE)
    for start in range(0, samples.shape[0], step):
        yield samples[start:start + step]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a trained model folder")
    parser.add_argument("audio", nargs="+", help="audio files to say, one clip each")
    parser.add_argument("--out", default="renders", help="folder for the rendered clips")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    talker = gt.load(args.model_dir, device=args.device)  # once
    print(f"loaded {talker.model_dir} (iteration {talker.iteration}, {talker.width}x{talker.height}, "
          f"{talker.audio_kind} features) in {time.perf_counter() - t0:.1f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, audio in enumerate(args.audio):  # many renders, no reloading
        result = talker.render(audio, out=out / f"clip_{i}.mp4", progress=False)
        print(f"clip {i}: {result.path} ({result.frames} frames, {result.fps:.1f} frames/s)")

    # Streaming: frames come while the audio arrives; measure the delay of the first frame.
    samples = load_audio(args.audio[0])
    start = time.perf_counter()
    first = None
    count = 0
    for _frame in talker.stream(chunks_of(samples)):
        if first is None:
            first = time.perf_counter() - start
        count += 1  # an app would send `_frame` ([H, W, 3] uint8 RGB) to its video track here
    print(f"streamed {count} frames; first frame after {first:.2f} s of processing, "
          f"{count / (time.perf_counter() - start):.1f} frames/s overall")

    # The frames as arrays, e.g. to composite the head into a scene of the app's own.
    brightness = [float(f.mean()) for f in talker.frames(samples[: SAMPLE_RATE])]
    print(f"first second: {len(brightness)} frames, mean brightness {np.mean(brightness):.1f}")


if __name__ == "__main__":
    main()
