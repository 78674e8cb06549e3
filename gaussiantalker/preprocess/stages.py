"""The preprocessing steps (reference §2, DESIGN.md "Dataset format"), one small class each.

Order and dependencies::

    probe -> crop -> frames -> audio -> features
                        \\-> landmarks -> blink
                                     \\-> tracking
                                     \\-> parsing -> background -> torso
                                                \\-> preview
    meta (after all)

See :mod:`.steps` for markers and fingerprints and ``docs/dataset-format.md`` for the files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..fileio import atomic_write
from . import crop as crop_mod
from .crop import CropBox
from .frames import (
    FPS,
    SAMPLE_RATE,
    check_video,
    extract_audio,
    extract_frames,
    frame_path,
    iter_frames,
)
from .landmarks import missing_ranges
from .steps import (
    Context,
    Output,
    PreprocessError,
    Step,
    StepResult,
    replace_dir,
    temp_dir_for,
    write_json,
)

logger = logging.getLogger(__name__)

MAX_GAP = 5
#: Fewest frames with a face a video must have (2 s at 25 fps).
MIN_FACE_FRAMES = 50
"""Longest run of frames without a face that is interpolated (longer runs are an error)."""
BACKGROUND_SAMPLES = 12
"""At least this many frames feed the background plate (every 20th frame as the original, or denser)."""


@dataclass
class Options:
    """One preprocessing run's inputs (resolved)."""

    video: Path
    name: str
    folder: Path
    size: int
    backends: Dict[str, str]
    """Requested backend per step: landmarks, parsing, tracking, audio, blink (``auto`` = the default)."""
    au_csv: Optional[Path]
    assets: Optional[Path]
    device: str
    source_digest: str


def _opts(ctx: Context) -> Options:
    return ctx.options


def num_frames(ctx: Context) -> int:
    return int(ctx.info("frames")["num_frames"])


def read_all_lms(ctx: Context) -> np.ndarray:
    """``[F, 68, 2]`` landmarks from ``ori_imgs/<i>.lms``."""
    from .landmarks import read_lms

    folder = ctx.path("ori_imgs")
    return np.stack([read_lms(frame_path(folder, i, ".lms")) for i in range(num_frames(ctx))])


class ProbeStep(Step):
    name = "probe"
    description = "check the video: streams, size, frame rate, duration"

    def reads(self, ctx):
        return [_opts(ctx).video]

    def params(self, ctx):
        return {"video_sha256": _opts(ctx).source_digest}

    def run(self, ctx):
        return StepResult({"source": check_video(_opts(ctx).video).to_dict()})


class CropStep(Step):
    name = "crop"
    depends = ("probe",)
    description = "find one square head-and-shoulders crop for the whole clip (MediaPipe face detection)"

    def reads(self, ctx):
        return [_opts(ctx).video]

    def params(self, ctx):
        return {"scale": crop_mod.FACE_SCALE, "center_y": crop_mod.FACE_CENTER_Y, "keep": crop_mod.KEEP_FULL,
                "samples": crop_mod.SAMPLES}

    def run(self, ctx):
        src = ctx.info("probe")["source"]
        try:
            box, found, samples = crop_mod.find_crop(_opts(ctx).video, src["width"], src["height"], src["duration"])
        except ValueError as exc:
            raise PreprocessError(str(exc)) from exc
        return StepResult({"crop": box.to_dict(), "faces_in_samples": found, "samples": samples})


class FramesStep(Step):
    name = "frames"
    depends = ("probe", "crop")
    description = "25 fps frames, cropped and resized: ori_imgs/<i>.jpg"

    def outputs(self, ctx):
        return [Output("ori_imgs", "*.jpg")]

    def reads(self, ctx):
        return [_opts(ctx).video]

    def params(self, ctx):
        return {"size": _opts(ctx).size, "fps": FPS}

    def run(self, ctx):
        box = CropBox.from_dict(ctx.info("crop")["crop"])
        dest = ctx.path("ori_imgs")
        tmp = temp_dir_for(dest)
        n = extract_frames(_opts(ctx).video, tmp, box, _opts(ctx).size)
        replace_dir(tmp, dest)
        return StepResult({"num_frames": n, "width": _opts(ctx).size, "height": _opts(ctx).size, "fps": FPS})


class AudioStep(Step):
    name = "audio"
    depends = ("probe", "frames")
    description = "16 kHz mono audio aligned to the frames: aud.wav, aud_train.wav, aud_novel.wav"

    def outputs(self, ctx):
        return [Output("aud.wav"), Output("aud_train.wav"), Output("aud_novel.wav")]

    def reads(self, ctx):
        return [_opts(ctx).video]

    def run(self, ctx):
        from ..audio import write_wav
        from .tracking.outputs import split_index

        n = num_frames(ctx)
        audio = extract_audio(_opts(ctx).video, n, ctx.info("probe")["source"]["audio_channels"])
        cut = round(split_index(n) * SAMPLE_RATE / FPS)
        for fname, part in (("aud.wav", audio), ("aud_train.wav", audio[:cut]), ("aud_novel.wav", audio[cut:])):
            atomic_write(ctx.path(fname), lambda tmp, a=part: write_wav(tmp, a))
        return StepResult({"seconds": audio.size / SAMPLE_RATE, "train_seconds": cut / SAMPLE_RATE})


class FeaturesStep(Step):
    name = "features"
    depends = ("audio",)
    description = "speech feature windows [F, 16, D] (aud_phonetic.npy / aud_mfcc.npy / aud_ds.npy / aud_hubert.npy)"

    def _kind(self, ctx) -> str:
        from ..audio import resolve_kind

        return resolve_kind(_opts(ctx).backends.get("audio", "auto"), _opts(ctx).assets)

    def outputs(self, ctx):
        from ..audio import feature_filename

        return [Output(feature_filename(self._kind(ctx)))]

    def params(self, ctx):
        return {"kind": self._kind(ctx)}

    def run(self, ctx):
        from ..audio import KINDS, extract_features

        kind = self._kind(ctx)
        n = num_frames(ctx)
        feats = extract_features(ctx.path("aud.wav"), kind, fps=FPS, assets=_opts(ctx).assets, num_frames=n,
                                 device=_opts(ctx).device)
        if feats.num_frames != n:
            raise RuntimeError(f"audio features have {feats.num_frames} windows for {n} frames")
        path = ctx.path(feats.filename)
        windows = np.ascontiguousarray(feats.windows, dtype=np.float32)
        atomic_write(path, lambda tmp: np.save(tmp, windows))
        for other in KINDS.values():  # one feature file per folder, so readers cannot pick a stale one
            if other.filename != feats.filename and ctx.path(other.filename).is_file():
                ctx.path(other.filename).unlink()
        return StepResult({"kind": feats.kind, "dim": feats.dim, "file": feats.filename, "source": feats.source})


def interpolate_gaps(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill the frames without a face by linear interpolation between the nearest found frames (held
    constant before the first / after the last). ``points`` ``[F, P, C]``; returns a copy."""
    out = np.array(points, dtype=np.float32, copy=True, order="C")  # C order: the reshape below is a view
    idx = np.flatnonzero(found)
    missing = np.flatnonzero(~found)
    if len(missing) == 0:
        return out
    flat = out.reshape(len(out), -1)
    for c in range(flat.shape[1]):
        flat[missing, c] = np.interp(missing, idx, flat[idx, c])
    return out


class LandmarksStep(Step):
    name = "landmarks"
    depends = ("frames",)
    description = "face landmarks: landmarks478.npy (MediaPipe) and ori_imgs/<i>.lms (68-point iBUG)"

    def outputs(self, ctx):
        return [Output("landmarks478.npy", optional=True), Output("ori_imgs", "*.lms")]

    def params(self, ctx):
        from .landmark_backends import backend_fingerprint

        return {"backend": backend_fingerprint(_opts(ctx).backends.get("landmarks", "auto"), _opts(ctx).assets),
                "max_gap": MAX_GAP}

    def check(self, ctx):
        from .landmark_backends import check_available

        check_available(_opts(ctx).backends.get("landmarks", "auto"), _opts(ctx).assets)

    def run(self, ctx):
        from .landmark_backends import detect
        from .landmarks import write_lms

        n = num_frames(ctx)
        folder = ctx.path("ori_imgs")
        frames = ctx.track(iter_frames(folder, range(n)), n, "landmarks")
        res = detect(frames, _opts(ctx).backends.get("landmarks", "auto"), _opts(ctx).assets, _opts(ctx).device)
        video = _opts(ctx).video
        if not res.found.any():
            raise PreprocessError(f"{video}: no face found in any of the {n} frames; the method needs a video of "
                                  "one person facing the camera")
        gaps = missing_ranges(res.found)
        long = [(a, b) for a, b in gaps if b - a + 1 > MAX_GAP]
        dropped = sum(b - a + 1 for a, b in long)
        if n - dropped < MIN_FACE_FRAMES:
            raise PreprocessError(f"{video}: a face is visible in only {n - dropped} of {n} frames; the method needs "
                                  f"at least {MIN_FACE_FRAMES} frames (2 s) of one person facing the camera")
        if long:
            # Runs too long to interpolate are kept as files (every step works on all frames) but left out of
            # the training and held-out splits by the tracking step.
            shown = ", ".join(f"{a}-{b}" for a, b in long[:10]) + (" ..." if len(long) > 10 else "")
            logger.warning("%s: no face in frames %s (runs longer than %d frames): %d frames left out of training",
                           video, shown, MAX_GAP, dropped)
        short = [(a, b) for a, b in gaps if b - a + 1 <= MAX_GAP]
        if short:
            logger.warning("%s: no face in frames %s; landmarks interpolated", video,
                           ", ".join(f"{a}-{b}" for a, b in short))
        pts68 = interpolate_gaps(res.points68, res.found)
        for i in range(n):
            write_lms(frame_path(folder, i, ".lms"), pts68[i])
        lm478 = ctx.path("landmarks478.npy")
        if res.points478 is not None:
            p478 = np.ascontiguousarray(res.points478, dtype=np.float32)
            atomic_write(lm478, lambda tmp: np.save(tmp, p478))
        elif lm478.exists():
            lm478.unlink()
        return StepResult({"backend": res.backend, "frames_with_face": int(res.found.sum()),
                           "missing_faces": [list(g) for g in gaps], "long_gaps": [list(g) for g in long],
                           "warnings": res.warnings})


class BlinkStep(Step):
    name = "blink"
    depends = ("frames", "landmarks")
    description = "eye blink AU45: au.csv (user file, OpenFace, or eye landmarks)"

    def outputs(self, ctx):
        return [Output("au.csv")]

    def reads(self, ctx):
        return [_opts(ctx).au_csv] if _opts(ctx).au_csv else []

    def _source(self, ctx) -> str:
        from .blink import openface_exe

        o = _opts(ctx)
        if o.au_csv is not None:
            return "user-csv"
        wanted = o.backends.get("blink", "auto")
        if wanted not in ("auto", "eye-landmarks", "openface"):
            raise ValueError(f"unknown blink backend {wanted!r}; use auto, eye-landmarks or openface")
        if wanted == "openface" or (wanted == "auto" and openface_exe()):
            return "openface"
        return "eye-landmarks"

    def params(self, ctx):
        from ..assets import file_digest

        o = _opts(ctx)
        src = self._source(ctx)
        p: Dict[str, Any] = {"source": src}
        if src == "user-csv":
            p["sha256"] = file_digest(o.au_csv) if o.au_csv.is_file() else None
        return p

    def check(self, ctx):
        from .blink import openface_exe, read_au45

        o = _opts(ctx)
        if o.au_csv is not None:
            read_au45(o.au_csv)  # column present and numeric; the row count is checked once frames exist
        elif self._source(ctx) == "openface" and not openface_exe():
            raise PreprocessError("blink backend 'openface' asked for, but OpenFace's FeatureExtraction is not on PATH")

    def run(self, ctx):
        from . import blink

        o = _opts(ctx)
        n = num_frames(ctx)
        src = self._source(ctx)
        dest = ctx.path("au.csv")
        if src == "user-csv":
            values = blink.validate_au_csv(o.au_csv, n)
            blink.copy_au_csv(o.au_csv, dest, len(values), n)
        elif src == "openface":
            values = blink.run_openface(ctx.path("ori_imgs"), n, dest, blink.openface_exe())
        else:
            lm478 = ctx.path("landmarks478.npy")
            pts = np.load(lm478) if lm478.is_file() else read_all_lms(ctx)
            found = np.ones(n, dtype=bool)
            for a, b in ctx.info("landmarks")["missing_faces"]:
                found[a:b + 1] = False
            values = blink.au45_from_landmarks(np.where(found[:, None, None], pts, np.nan))
            blink.write_au_csv(dest, values, found, FPS)
        return StepResult({"backend": src, **blink.blink_stats(values)})


class TrackingStep(Step):
    name = "tracking"
    depends = ("frames", "landmarks")
    description = "head tracking: track_params.pt, transforms_train/val.json, points3d.ply, track_preview.mp4"

    def outputs(self, ctx):
        return [Output("track_params.pt"), Output("transforms_train.json"), Output("transforms_val.json"),
                Output("points3d.ply"), Output("track_preview.mp4")]

    def params(self, ctx):
        from .tracking import bfm_available

        o = _opts(ctx)
        return {"backend": o.backends.get("tracking", "auto"), "bfm": bfm_available(o.assets)}

    def check(self, ctx):
        from ..assets import asset_dir
        from .tracking import bfm_available
        from .tracking.run import BACKENDS

        o = _opts(ctx)
        wanted = o.backends.get("tracking", "auto")
        if wanted not in BACKENDS:
            raise ValueError(f"unknown tracking backend {wanted!r}; use one of {BACKENDS}")
        if wanted == "bfm" and not bfm_available(o.assets):
            raise FileNotFoundError(f"tracking backend 'bfm' needs the BFM 2009 files (01_MorphableModel.mat and "
                                    f"the expression basis) in {asset_dir(o.assets)}; or use 'offline'")

    def run(self, ctx):
        from .tracking import (
            TrackerConfig,
            fit_landmarks,
            select_model,
            write_tracking_outputs,
        )

        o = _opts(ctx)
        n = num_frames(ctx)
        contour = ctx.info("landmarks")["backend"] != "mediapipe"
        model = select_model(o.backends.get("tracking", "auto"), o.assets, jaw="contour" if contour else "fixed")
        # One CPU thread: the fit is many small tensor ops; with 2 threads it runs 1.6x faster on an idle
        # 2-core machine but ~10x slower when other processes share the cores (measured on May_5s: 5-8 s
        # against 70-100 s), and a fixed thread count keeps the results identical from machine to machine.
        config = TrackerConfig(jaw_weight=0.1 if contour else 1.0, cpu_threads=1)
        size = (int(ctx.info("frames")["height"]), int(ctx.info("frames")["width"]))
        result = fit_landmarks(read_all_lms(ctx), model, size, config, o.device)
        frames = iter_frames(ctx.path("ori_imgs"), range(n))
        from .tracking.outputs import split_index, tracking_outliers

        no_face = np.zeros(n, bool)
        for a, b in ctx.info("landmarks").get("long_gaps", []):
            no_face[a:b + 1] = True
        outliers = tracking_outliers(result) & ~no_face
        if outliers.any():
            logger.warning("%s: %d frames whose tracking is an outlier (landmark fit error far above the clip's) are "
                           "left out of training: %s", o.video, int(outliers.sum()),
                           ", ".join(str(i) for i in np.flatnonzero(outliers)[:20]))
        out = write_tracking_outputs(ctx.folder, result, frames, exclude=np.flatnonzero(no_face | outliers))
        cut = split_index(n)
        backend = "bfm" if "bfm" in out.model.lower() else "offline"
        return StepResult({"backend": backend, "model": out.model, "focal": out.focal,
                           "median_reprojection_px": round(out.median_reprojection_px, 4),
                           "median_jitter_deg": round(out.median_jitter_deg, 4),
                           "split": {"train": [0, cut], "val": [cut, n]},
                           "dropped": {"no_face": int(no_face.sum()), "tracking_outliers": int(outliers.sum()),
                                       "frames": [int(i) for i in np.flatnonzero(no_face | outliers)]}})


class ParsingStep(Step):
    name = "parsing"
    depends = ("frames", "landmarks")
    description = "face parsing (head / neck / torso / background): parsing/<i>.png"

    def outputs(self, ctx):
        return [Output("parsing", "*.png")]

    def params(self, ctx):
        from ..assets import find_asset

        o = _opts(ctx)
        weights = find_asset("79999_iter.pth", o.assets)
        return {"backend": o.backends.get("parsing", "auto"),
                "bisenet": [str(weights), weights.stat().st_size] if weights else None}

    def check(self, ctx):
        from ..assets import asset_dir, find_asset
        from .parsing import BACKENDS, BISENET_FILE

        o = _opts(ctx)
        wanted = o.backends.get("parsing", "auto")
        if wanted not in BACKENDS:
            raise ValueError(f"unknown parsing backend {wanted!r}; use one of {', '.join(BACKENDS)}")
        if wanted == "bisenet" and find_asset(BISENET_FILE, o.assets) is None:
            raise FileNotFoundError(f"parsing backend 'bisenet' needs {BISENET_FILE} in {asset_dir(o.assets)}; "
                                    "or use 'mediapipe-selfie'")

    def run(self, ctx):
        from .landmarks import read_lms
        from .parsing import make_parser, write_parsing

        o = _opts(ctx)
        parser = make_parser(o.backends.get("parsing", "auto"), assets=o.assets, device=o.device)
        n = num_frames(ctx)
        src = ctx.path("ori_imgs")
        dest = ctx.path("parsing")
        tmp = temp_dir_for(dest)
        for i, rgb in enumerate(ctx.track(iter_frames(src, range(n)), n, "parsing")):
            labels = parser(rgb, read_lms(frame_path(src, i, ".lms")))
            write_parsing(tmp / f"{i}.png", labels)
        replace_dir(tmp, dest)
        return StepResult({"backend": parser.name})


def background_indices(n: int) -> List[int]:
    """Frames used for the background plate: every 20th (reference §2.5), denser for short clips."""
    stride = max(1, min(20, n // BACKGROUND_SAMPLES))
    return list(range(0, n, stride))


class BackgroundStep(Step):
    name = "background"
    depends = ("frames", "parsing")
    description = "static background plate: bc.jpg"

    def outputs(self, ctx):
        return [Output("bc.jpg")]

    def run(self, ctx):
        from .background import background_plate
        from .frames import write_jpg

        idx = background_indices(num_frames(ctx))
        # paths: background_plate reads one frame at a time, so a long clip is never held in memory
        frames = [frame_path(ctx.path("ori_imgs"), i) for i in idx]
        labels = [frame_path(ctx.path("parsing"), i, ".png") for i in idx]
        plate = background_plate(frames, labels)
        atomic_write(ctx.path("bc.jpg"), lambda tmp: write_jpg(tmp, plate))
        return StepResult({"frames_used": len(idx)})


class TorsoStep(Step):
    name = "torso"
    depends = ("frames", "parsing", "background")
    description = "ground truth over the plate and torso layers: gt_imgs/<i>.jpg, torso_imgs/<i>.png"

    def outputs(self, ctx):
        return [Output("gt_imgs", "*.jpg"), Output("torso_imgs", "*.png")]

    def run(self, ctx):
        from concurrent.futures import ThreadPoolExecutor

        from .frames import read_rgb, write_jpg, write_png_rgba
        from .parsing import read_parsing
        from .torso import compose_gt_torso

        n = num_frames(ctx)
        plate = read_rgb(ctx.path("bc.jpg"))
        gt_dest, torso_dest = ctx.path("gt_imgs"), ctx.path("torso_imgs")
        gt_tmp, torso_tmp = temp_dir_for(gt_dest), temp_dir_for(torso_dest)

        def one(i: int) -> None:
            rgb = read_rgb(frame_path(ctx.path("ori_imgs"), i))
            labels = read_parsing(frame_path(ctx.path("parsing"), i, ".png"))
            gt, torso = compose_gt_torso(rgb, labels, plate)
            write_jpg(gt_tmp / f"{i}.jpg", gt)
            write_png_rgba(torso_tmp / f"{i}.png", torso)

        # frames are independent and numpy / OpenCV release the GIL: threads use the cores
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for _ in ctx.track(pool.map(one, range(n)), n, "torso"):
                pass
        replace_dir(gt_tmp, gt_dest)
        replace_dir(torso_tmp, torso_dest)
        return StepResult({})


class PreviewStep(Step):
    name = "preview"
    description = "quick-look video with landmarks and parsing overlaid: preview.mp4"

    def __init__(self, with_parsing: bool = True) -> None:
        self.depends = ("frames", "landmarks", "parsing") if with_parsing else ("frames", "landmarks")

    def outputs(self, ctx):
        return [Output("preview.mp4")]

    def run(self, ctx):
        from .preview import write_preview

        with_parsing = "parsing" in self.depends
        frames = write_preview(ctx.path("preview.mp4"), ctx.folder, num_frames(ctx), with_parsing)
        return StepResult({"frames": frames})


class MetaStep(Step):
    name = "meta"
    description = "meta.json: source, size, crop, backends, audio features, split, timings"

    def __init__(self, depends: Tuple[str, ...]) -> None:
        self.depends = depends

    def outputs(self, ctx):
        return [Output("meta.json")]

    def run(self, ctx):
        write_json(ctx.path("meta.json"), build_meta(ctx))
        return StepResult({})


def build_meta(ctx: Context) -> Dict[str, Any]:
    """The ``meta.json`` document from the markers of the finished steps."""
    from .. import __version__

    o = _opts(ctx)
    m = {k: ctx.markers[k]["info"] for k in ctx.markers}
    n = int(m["frames"]["num_frames"])
    backends = {"landmarks": m["landmarks"]["backend"], "crop": "mediapipe-face-detection"}
    for step in ("parsing", "tracking", "blink"):
        if step in m:
            backends[step] = m[step]["backend"]
    backends["audio"] = m["features"]["kind"]
    track = m.get("tracking", {})
    cut = int(n * 10 / 11)
    return {
        "format": "gaussiantalker-dataset", "version": 1, "library_version": __version__, "name": o.name,
        "source": m["probe"]["source"], "fps": FPS, "num_frames": n,
        "width": int(m["frames"]["width"]), "height": int(m["frames"]["height"]),
        "crop": m["crop"]["crop"],
        "audio": {"kind": m["features"]["kind"], "dim": m["features"]["dim"], "file": m["features"]["file"],
                  "sample_rate": SAMPLE_RATE, "seconds": m["audio"]["seconds"]},
        "backends": backends,
        "split": track.get("split", {"train": [0, cut], "val": [cut, n]}),
        "missing_faces": m["landmarks"]["missing_faces"],
        "frames_with_face": m["landmarks"]["frames_with_face"],
        "dropped_frames": track.get("dropped", {"no_face": 0, "tracking_outliers": 0, "frames": []}),
        "tracking": {k: v for k, v in track.items() if k not in ("split", "backend", "dropped")},
        "blink": {k: v for k, v in m.get("blink", {}).items() if k != "backend"},
        "timings": {k: ctx.markers[k]["seconds"] for k in ctx.markers},
    }


def make_steps(with_parsing: bool = True) -> List[Step]:
    """The steps in run order (parsing, background, torso and the preview's parsing overlay need
    :mod:`.parsing`)."""
    steps: List[Step] = [ProbeStep(), CropStep(), FramesStep(), AudioStep(), FeaturesStep(), LandmarksStep(),
                         BlinkStep(), TrackingStep()]
    if with_parsing:
        steps += [ParsingStep(), BackgroundStep(), TorsoStep()]
    steps.append(PreviewStep(with_parsing))
    steps.append(MetaStep(tuple(s.name for s in steps)))
    return steps


__all__ = [
    "MAX_GAP",
    "Options",
    "background_indices",
    "build_meta",
    "interpolate_gaps",
    "make_steps",
    "missing_ranges",
]
