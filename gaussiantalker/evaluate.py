"""Evaluation on the held-out split: PSNR, SSIM, LPIPS, LMD, ``metrics.json`` and a self-contained HTML report.

Each held-out (``val``) frame is rendered with its own tracked pose, blink, torso/background and audio
window (as in training) and compared with its ground truth ``image · head_mask + bg_torso · (1 - head_mask)``:

* PSNR, SSIM and, when its weights are in the asset folder, LPIPS (:mod:`gaussiantalker.metrics`);
* LMD: the mean distance in pixels of the 20 mouth landmarks (iBUG 48-67) between the rendered and the
  real frame, both detected with the landmark backend that preprocessing used (``meta.json``
  ``backends.landmarks``; MediaPipe when the dataset does not say), over the frames where both have a face.

``metrics.json`` keeps what training wrote and gets an ``evaluation`` entry; ``report.html`` (no external
resources: images are inline JPEG, plots inline SVG) shows side-by-side frames, per-frame metric plots,
the training curves (from the TensorBoard log or a ``train_log.jsonl`` when training wrote one), the
backends of every step and the configuration.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from .fileio import atomic_write

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["EvaluationResult", "evaluate", "mouth_lmd", "read_training_curves"]

_LMD_BACKENDS = ("mediapipe", "dlib", "face-alignment")
_SIDE_BY_SIDE = 6  # frames shown in the report


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured and wrote. Metric values are means over the held-out frames."""

    model_dir: Path
    iteration: int
    split: str
    frames: int
    psnr: float
    ssim: float
    lpips: Optional[float]  # None without LPIPS weights
    lmd: Optional[float]  # None when no frame pair had a face on both sides
    lmd_frames: int  # frames LMD was averaged over
    lmd_backend: str
    per_frame: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    metrics_path: Optional[Path] = None
    report_path: Optional[Path] = None
    seconds: float = 0.0

    def summary(self) -> dict:
        """The ``evaluation`` entry of ``metrics.json``."""
        d = asdict(self)
        for k in ("model_dir", "metrics_path", "report_path"):
            d.pop(k)
        d["seconds"] = round(self.seconds, 2)
        return _json_safe(d)


def _json_safe(x):
    if isinstance(x, float):
        return None if not math.isfinite(x) else round(x, 6)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------------
# LMD


def mouth_lmd(rendered, real, backend: str = "mediapipe", assets: Optional[PathLike] = None) -> np.ndarray:
    """Per-frame mouth landmark distance (pixels) between two clips of ``[H, W, 3]`` uint8 RGB frames.

    Both clips go through the same landmark backend (``mediapipe``, ``dlib`` or ``face-alignment``,
    each clip in its own pass, in order). Frames where either side has no face are NaN.

    Returns:
        ``[F]`` float64.
    Raises:
        BackendUnavailableError: the backend is not installed or its files are missing.
        ValueError: the clips differ in length.
    """
    from .metrics import landmark_distance
    from .preprocess.landmark_backends import detect

    a = detect(rendered, backend=backend, assets=assets)
    b = detect(real, backend=backend, assets=assets)
    if a.num_frames != b.num_frames:
        raise ValueError(f"the clips have {a.num_frames} and {b.num_frames} frames")
    d = landmark_distance(torch.from_numpy(a.points68.astype(np.float64)),
                          torch.from_numpy(b.points68.astype(np.float64))).numpy()
    d[~(a.found & b.found)] = np.nan
    return d


# --------------------------------------------------------------------------------------------------
# training curves


def read_training_curves(model_dir: PathLike) -> Dict[str, List[tuple]]:
    """Scalar series logged by training: ``{tag: [(step, value), ...]}`` ({} when none were logged).

    Reads ``train_log.jsonl`` (one JSON object per line with ``iteration`` and numbers) if present, else
    the TensorBoard event files under ``tensorboard/`` (read with tensorboard's protobuf classes, no
    TensorFlow needed).
    """
    root = Path(model_dir)
    curves: Dict[str, List[tuple]] = {}
    jsonl = root / "train_log.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = rec.get("iteration", rec.get("step"))
            if not isinstance(step, (int, float)):
                continue
            for k, v in rec.items():
                if k not in ("iteration", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    curves.setdefault(k, []).append((float(step), float(v)))
        return curves
    files = sorted((root / "tensorboard").rglob("events.out.tfevents.*")) if (root / "tensorboard").is_dir() else []
    for f in files:
        try:
            _read_events(f, curves)
        except (ImportError, ValueError, OSError) as exc:
            log.info("training curves: cannot read %s (%s)", f, exc)
    for series in curves.values():
        series.sort()
    return curves


def _read_events(path: Path, curves: Dict[str, List[tuple]]) -> None:
    """Scalars of one TFRecord file of ``Event`` protos (length, crc, data, crc per record)."""
    import struct

    from tensorboard.compat.proto.event_pb2 import Event

    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        start = pos + 12
        if start + length + 4 > len(data):
            break  # a record still being written
        ev = Event.FromString(data[start:start + length])
        pos = start + length + 4
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                value = float(v.simple_value)
            elif v.HasField("tensor") and v.tensor.float_val:
                value = float(v.tensor.float_val[0])
            else:
                continue
            if math.isfinite(value):
                curves.setdefault(v.tag, []).append((float(ev.step), value))


# --------------------------------------------------------------------------------------------------
# evaluation


class _FrameStore:
    """uint8 frames kept on disk (a memmap in a temporary folder), so a long split never fills memory."""

    def __init__(self, count: int, height: int, width: int, folder: Path, name: str) -> None:
        self.array = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8,
                                               shape=(count, height, width, 3))

    def __iter__(self):
        for i in range(self.array.shape[0]):
            yield np.ascontiguousarray(self.array[i])


def evaluate(model, iteration: Optional[int] = None, device="auto", workspace: Optional[PathLike] = None,
             out: Optional[PathLike] = None, batch_size: int = 16, assets: Optional[PathLike] = None,
             progress: bool = True) -> EvaluationResult:
    """Render the held-out split and measure it; write ``metrics.json`` and ``report.html``.

    Args:
        model: a :class:`gaussiantalker.infer.Talker`, a :class:`gaussiantalker.train.Model`, a model
            folder or a model name in ``workspace``.
        iteration, device, workspace: as for :func:`gaussiantalker.load`.
        out: folder for ``report.html`` (default: the model folder). ``metrics.json`` always goes to the
            model folder, merged with what training wrote.
        batch_size: frames per deformation/rasterizer call (split on out-of-memory).
        assets: asset folder (LPIPS weights, landmark model files).
    Returns:
        :class:`EvaluationResult`.
    Raises:
        as :func:`gaussiantalker.load`; ValueError when the held-out split is empty.
    """
    from .infer import Talker, load

    start = time.perf_counter()
    talker = model if isinstance(model, Talker) else load(model, iteration=iteration, device=device,
                                                          workspace=workspace, assets=assets)
    split = talker.data.split("val")
    n = len(split)
    if n == 0:
        raise ValueError(f"dataset {talker.data.path} has no held-out (val) frames to evaluate on")
    notes: List[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="gt_eval_"))
    try:
        ours = _FrameStore(n, talker.height, talker.width, tmp, "ours")
        real = _FrameStore(n, talker.height, talker.width, tmp, "real")
        per = _render_and_score(talker, split, ours, real, batch_size, assets, progress)
        if per["lpips"] is None:
            notes.append("LPIPS not computed: its weights are not in the asset folder (see `gaussiantalker assets`)")
        backend = _lmd_backend(talker.data.meta, notes)
        lmd = _lmd(ours, real, backend, assets, notes)
        side = _side_by_side(ours, real)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    valid = lmd[np.isfinite(lmd)]
    lmd_list = [None if not np.isfinite(x) else float(x) for x in lmd]
    per_frame = {"psnr": per["psnr"], "ssim": per["ssim"], "lmd": lmd_list}
    if per["lpips"] is not None:
        per_frame["lpips"] = per["lpips"]
    result = EvaluationResult(
        model_dir=talker.model_dir, iteration=talker.iteration, split="val", frames=n,
        psnr=float(np.mean(per["psnr"])), ssim=float(np.mean(per["ssim"])),
        lpips=float(np.mean(per["lpips"])) if per["lpips"] is not None else None,
        lmd=float(valid.mean()) if valid.size else None, lmd_frames=int(valid.size), lmd_backend=backend,
        per_frame=per_frame, notes=notes,
    )
    result.seconds = time.perf_counter() - start
    result.metrics_path = _write_metrics(talker.model_dir, result)
    result.report_path = write_report(Path(out) if out is not None else talker.model_dir, result, talker, side)
    log.info("evaluated %d held-out frames: PSNR %.2f dB, SSIM %.4f, LPIPS %s, LMD %s", n, result.psnr,
             result.ssim, "-" if result.lpips is None else f"{result.lpips:.4f}",
             "-" if result.lmd is None else f"{result.lmd:.2f} px")
    return result


def _render_and_score(talker, split, ours: _FrameStore, real: _FrameStore, batch_size: int, assets,
                      progress: bool) -> dict:
    from tqdm.auto import tqdm

    from .data import collate
    from .infer import run_batches
    from .metrics import lpips, psnr, ssim
    from .model.types import Conditions
    from .render.rasterize import render_batch
    from .render.video import to_uint8

    per: Dict[str, Optional[list]] = {"psnr": [], "ssim": [], "lpips": []}

    def one(a: int, b: int):
        batch = collate([split[k] for k in range(a, b)]).to(talker.device)
        with torch.no_grad():
            g = talker.model.deform("fine", Conditions(batch.audio, batch.eye, batch.cam))
            image = render_batch(g, batch.cameras, batch.bg_torso).image.clamp(0, 1)
        return image, batch.target

    bar = tqdm(total=len(split), unit="frame", desc="evaluate", disable=not progress)
    for a, b, (image, target) in run_batches(one, len(split), batch_size):
        per["psnr"] += psnr(image, target).tolist()
        per["ssim"] += ssim(image, target).tolist()
        lp = lpips(image, target, assets=assets) if per["lpips"] is not None else None
        if lp is None:
            per["lpips"] = None
        else:
            per["lpips"] += lp.tolist()
        ours.array[a:b] = to_uint8(image)
        real.array[a:b] = to_uint8(target)
        bar.update(b - a)
    bar.close()
    return per


def _lmd_backend(meta: dict, notes: List[str]) -> str:
    name = str((meta.get("backends") or {}).get("landmarks") or "")
    if name in _LMD_BACKENDS:
        return name
    notes.append(f"LMD uses mediapipe landmarks (the dataset's landmark backend is {name or 'not recorded'!r})")
    return "mediapipe"


def _lmd(ours: _FrameStore, real: _FrameStore, backend: str, assets, notes: List[str]) -> np.ndarray:
    from .preprocess.landmark_backends import BackendUnavailableError

    n = ours.array.shape[0]
    try:
        d = mouth_lmd(iter(ours), iter(real), backend=backend, assets=assets)
    except BackendUnavailableError as exc:
        notes.append(f"LMD not computed: {exc}")
        return np.full(n, np.nan)
    missing = int((~np.isfinite(d)).sum())
    if missing == n:
        notes.append(f"LMD not computed: {backend} found no face pair in any of the {n} frames")
    elif missing:
        notes.append(f"LMD over {n - missing} of {n} frames ({missing} without a face on one side)")
    return d


def _side_by_side(ours: _FrameStore, real: _FrameStore) -> List[tuple]:
    """``(index, [H, 2W, 3] uint8)`` of a few evenly spaced frames: ground truth | ours."""
    n = ours.array.shape[0]
    picks = sorted(set(np.linspace(0, n - 1, min(_SIDE_BY_SIDE, n)).round().astype(int).tolist()))
    return [(i, np.concatenate([real.array[i], ours.array[i]], axis=1)) for i in picks]


def _write_metrics(model_dir: Path, result: EvaluationResult) -> Path:
    path = Path(model_dir) / "metrics.json"
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; it is replaced", path)
        if not isinstance(data, dict):
            data = {}
    data["evaluation"] = result.summary()
    data["evaluation"]["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# the HTML report (self-contained: inline JPEG images and SVG plots, no scripts, no external resources)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
.frames{display:flex;flex-wrap:wrap;gap:1em}.frames figure{margin:0}figcaption{font-size:.85em;color:#555}
.plots{display:flex;flex-wrap:wrap;gap:1em}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.8em}
.note{color:#8a5a00}"""


def _esc(text) -> str:
    import html

    return html.escape(str(text), quote=True)


def _jpeg_data_uri(rgb: np.ndarray, width: int = 512) -> str:
    import base64

    import cv2

    h, w = rgb.shape[:2]
    if w < width // 2:  # tiny frames: enlarge (nearest) so they can be seen
        k = max(1, (width // 2) // w)
        rgb = cv2.resize(rgb, (w * k, h * k), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def svg_line_plot(series: Dict[str, List[tuple]], title: str, width: int = 480, height: int = 220,
                  xlabel: str = "") -> str:
    """A small SVG line plot of ``{name: [(x, y), ...]}`` (non-finite points skipped)."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)]
    left, right, top, bottom = 52, 10, 24, 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
           f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="13">{_esc(title)}</text>']
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(out)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>')
    for v in (y0, (y0 + y1) / 2, y1):
        out.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.4g}</text>')
    for v in (x0, x1):
        out.append(f'<text x="{sx(v):.1f}" y="{height - 12}" text-anchor="middle" font-size="10">{v:.6g}</text>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2}" y="{height - 2}" text-anchor="middle" font-size="10">'
                   f'{_esc(xlabel)}</text>')
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for k, (name, s) in enumerate(series.items()):
        good = [(x, y) for x, y in s if y is not None and math.isfinite(y)]
        if not good:
            continue
        c = colours[k % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{path}"/>')
        if len(good) == 1:
            out.append(f'<circle cx="{sx(good[0][0]):.1f}" cy="{sy(good[0][1]):.1f}" r="3" fill="{c}"/>')
        if len(series) > 1:
            out.append(f'<text x="{left + 6}" y="{top + 14 + 12 * k}" font-size="10" fill="{c}">{_esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _fmt(v, digits: int = 4, unit: str = "") -> str:
    return "&ndash;" if v is None else f"{v:.{digits}f}{unit}"


def write_report(folder: Path, result: EvaluationResult, talker, side: List[tuple]) -> Path:
    """Write ``report.html`` into ``folder`` (atomically); returns its path."""
    meta = talker.data.meta or {}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gaussiantalker evaluation: "
             f"{_esc(talker.model_dir.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {_esc(talker.model_dir.name)} (iteration {result.iteration})</h1>",
             f"<p>Model folder <code>{_esc(talker.model_dir)}</code>, dataset <code>{_esc(talker.data.path)}</code>, "
             f"{result.frames} held-out frames at {talker.width}x{talker.height}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>",
             "<h2>Metrics (held-out split)</h2><table>",
             f"<tr><th>PSNR</th><td>{_fmt(result.psnr, 2, ' dB')}</td></tr>",
             f"<tr><th>SSIM</th><td>{_fmt(result.ssim)}</td></tr>",
             f"<tr><th>LPIPS</th><td>{_fmt(result.lpips)}</td></tr>",
             f"<tr><th>LMD (mouth, {_esc(result.lmd_backend)})</th><td>{_fmt(result.lmd, 2, ' px')} "
             f"over {result.lmd_frames} frames</td></tr></table>"]
    parts += [f'<p class="note">{_esc(n)}</p>' for n in result.notes]
    parts.append("<h2>Frames: ground truth | ours</h2><div class=\"frames\">")
    for i, img in side:
        parts.append(f'<figure><img alt="frame {i}" src="{_jpeg_data_uri(img)}"><figcaption>held-out frame {i}: '
                     f'PSNR {_fmt(result.per_frame["psnr"][i], 2)} dB</figcaption></figure>')
    parts.append("</div><h2>Per-frame metrics</h2><div class=\"plots\">")
    for key, unit in (("psnr", "dB"), ("ssim", ""), ("lpips", ""), ("lmd", "px")):
        vals = result.per_frame.get(key)
        if vals is not None:
            parts.append(svg_line_plot({key: list(enumerate(vals))}, f"{key.upper()} {unit}".strip(),
                                       xlabel="held-out frame"))
    parts.append("</div><h2>Training curves</h2>")
    curves = read_training_curves(talker.model_dir)
    if curves:
        parts.append("<div class=\"plots\">")
        parts += [svg_line_plot({tag: s}, tag, xlabel="iteration") for tag, s in sorted(curves.items())]
        parts.append("</div>")
    else:
        parts.append("<p>Training logged no curves in this model folder.</p>")
    parts.append("<h2>Backends</h2><table>")
    backends = dict(meta.get("backends") or {})
    backends.setdefault("audio features", talker.audio_kind)
    backends["lmd landmarks"] = result.lmd_backend
    parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in backends.items()]
    parts.append("</table><h2>Configuration</h2>")
    cfg_path = talker.model_dir / "config.json"
    cfg_text = cfg_path.read_text(encoding="utf-8") if cfg_path.is_file() else "(no config.json)"
    parts.append(f"<details><summary>config.json</summary><pre>{_esc(cfg_text)}</pre></details>")
    if meta:
        parts.append(f"<details><summary>dataset meta.json</summary><pre>{_esc(json.dumps(meta, indent=2))}</pre>"
                     "</details>")
    parts.append("</body></html>\n")
    text = "".join(parts)
    return atomic_write(Path(folder) / "report.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))
