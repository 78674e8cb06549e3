"""The evaluation report: one self-contained HTML file (inline JPEG images and SVG plots, no scripts, no
external resources) with the metrics, the mouth opening over time (real vs rendered), frames side by side
with their mouth crops enlarged, per-frame plots, the training curves, the backends and the configuration."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
import os
from typing import Dict, List, Union

import numpy as np

from .fileio import atomic_write

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

__all__ = ["mouth_strip", "read_training_curves", "svg_line_plot", "write_report"]

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


def mouth_strip(real: np.ndarray, ours: np.ndarray, lms: np.ndarray, zoom: int = 3) -> np.ndarray:
    """``[H + h, 2W, 3]`` uint8: real | ours, and under them both mouth crops enlarged ``zoom`` times.

    ``lms`` ``[68, 2]`` (the real frame's landmarks) place the crop: a square around the outer lips, 1.6 times
    their width."""
    import cv2

    h, w = real.shape[:2]
    top = np.concatenate([real, ours], axis=1)
    mouth = lms[48:60] if lms is not None and np.isfinite(lms).all() else None
    if mouth is None:
        return top
    cx, cy = mouth.mean(0)
    half = max(8, int(0.8 * (mouth[:, 0].max() - mouth[:, 0].min())))
    x0, y0 = int(np.clip(cx - half, 0, w - 2 * half)), int(np.clip(cy - half, 0, h - 2 * half))
    side = min(2 * half, w, h)
    crops = [cv2.resize(img[y0:y0 + side, x0:x0 + side], (w, int(w * 0.5)), interpolation=cv2.INTER_CUBIC)
             if side * zoom >= w * 0.5 else cv2.resize(img[y0:y0 + side, x0:x0 + side], (side * zoom, side * zoom))
             for img in (real, ours)]
    width = min(c.shape[1] for c in crops)
    height = min(c.shape[0] for c in crops)
    bottom = np.concatenate([c[:height, :width] for c in crops], axis=1)
    if bottom.shape[1] != top.shape[1]:
        bottom = cv2.resize(bottom, (top.shape[1], int(bottom.shape[0] * top.shape[1] / bottom.shape[1])))
    return np.concatenate([top, bottom], axis=0)


def _row(name: str, value: str) -> str:
    return f"<tr><th>{_esc(name)}</th><td>{value}</td></tr>"


def _parts_rows(parts: dict) -> List[str]:
    """Rows of the lip-sync table for a lip-code model's two halves (``EvaluationResult.mouth_parts``)."""
    if not parts:
        return []
    return [_row("mouth rendered from the frames' tracked lip codes: r / amplitude (the renderer alone)",
                 f"{_fmt(parts.get('tracked_codes_pearson'), 3)} / {_fmt(parts.get('tracked_codes_amplitude'), 3)}"),
            _row("opening read out of the predicted lip codes: r (the audio predictor alone)",
                 _fmt(parts.get("predicted_readout_pearson"), 3)),
            _row("the half that limits lip sync", _esc(parts["limit"]) if parts.get("limit") else "&ndash;")]


def write_report(folder: Path, result, talker, side: List[tuple]) -> Path:
    """Write ``report.html`` into ``folder`` (atomically); returns its path. ``result``: an
    :class:`~gaussiantalker.evaluate.EvaluationResult`; ``side``: ``(index, image)`` frames to show."""
    meta = talker.data.meta or {}
    m = result.mouth or {}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gaussiantalker evaluation: "
             f"{_esc(talker.model_dir.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {_esc(talker.model_dir.name)} (iteration {result.iteration})</h1>",
             f"<p>Model folder <code>{_esc(talker.model_dir)}</code>, dataset <code>{_esc(talker.data.path)}</code>, "
             f"{result.frames} held-out frames at {talker.width}x{talker.height} (head rendered at "
             f"{talker.render_width}x{talker.render_height}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
             "</p>",
             "<h2>Lip sync (held-out frames, their own audio and poses)</h2><table>",
             _row("mouth opening: Pearson r (rendered vs real)", _fmt(m.get("pearson"), 3)),
             _row("mouth opening: amplitude (std rendered / std real)", _fmt(m.get("amplitude_ratio"), 3)),
             _row("best lag (frames) and its r", f"{m.get('best_lag', '&ndash;')} / {_fmt(m.get('best_lag_pearson'), 3)}"),
             _row(f"LMD (mouth, {result.lmd_backend})", f"{_fmt(result.lmd, 2, ' px')} over {result.lmd_frames} frames"),
             *_parts_rows(result.mouth_parts or {}),
             "</table><h2>Image</h2><table>",
             _row("head alpha inside the head mask (1 = solid)", _fmt(result.head_alpha, 4)),
             _row("head alpha inside the mask without its edge (1.5 % of the frame: a see-through head lowers "
                  "both, soft or misaligned edges only the first)", _fmt(result.head_alpha_interior, 4)),
             _row("face-crop PSNR (mean training frame)", f"{_fmt(result.face_psnr, 2, ' dB')} "
                  f"({_fmt(result.face_psnr_mean_frame, 2, ' dB')})"),
             _row("PSNR, whole frame (mean training frame)", f"{_fmt(result.psnr, 2, ' dB')} "
                  f"({_fmt(result.psnr_mean_frame, 2, ' dB')})"),
             _row("SSIM", _fmt(result.ssim)), _row("LPIPS", _fmt(result.lpips)), "</table>",
             "<p>Whole-frame PSNR pastes the real torso and background under the head; the mouth figures and the "
             "face crop say more about what a viewer sees.</p>"]
    parts += [f'<p class="note">{_esc(n)}</p>' for n in result.notes]
    op_r, op_o = result.per_frame.get("opening_real"), result.per_frame.get("opening_ours")
    if op_r is not None and op_o is not None:
        parts.append("<h2>Mouth opening over time</h2><div class=\"plots\">")
        series = {"real": list(enumerate(op_r)), "rendered": list(enumerate(op_o))}
        if result.per_frame.get("opening_tracked_codes") is not None:
            series["rendered from the tracked lip codes"] = list(enumerate(result.per_frame["opening_tracked_codes"]))
        parts.append(svg_line_plot(series,
                                   "inner-lip gap / face height", width=960, height=260, xlabel="held-out frame"))
        parts.append("</div>")
    parts.append("<h2>Frames: ground truth | ours (mouths enlarged below)</h2><div class=\"frames\">")
    for i, img in side:
        parts.append(f'<figure><img alt="frame {i}" src="{_jpeg_data_uri(img)}"><figcaption>held-out frame {i}: '
                     f'PSNR {_fmt(result.per_frame["psnr"][i], 2)} dB</figcaption></figure>')
    parts.append("</div><h2>Per-frame metrics</h2><div class=\"plots\">")
    for key, unit in (("psnr", "dB"), ("face_psnr", "dB"), ("ssim", ""), ("lpips", ""), ("lmd", "px"),
                      ("head_alpha", "")):
        vals = result.per_frame.get(key)
        if vals is not None:
            parts.append(svg_line_plot({key: list(enumerate(vals))}, f"{key.upper()} {unit}".strip(),
                                       xlabel="held-out frame"))
    parts.append("</div>")
    if result.audio:
        parts.append("<h2>Other voices (no ground truth)</h2><table><tr><th>audio</th><th>r(opening, envelope)</th>"
                     "<th>reference r (real footage, own audio)</th><th>opening in silences (closed gap + margin)"
                     "</th><th>real footage in its own silences</th><th>r at the subject's own lead (real footage; "
                     "shift in frames)</th><th>frames</th></tr>")
        for entry in result.audio:
            parts.append(f"<tr><td>{_esc(entry['audio'])}</td><td>{_fmt(entry.get('envelope_pearson'), 3)}</td>"
                         f"<td>{_fmt(entry.get('reference_pearson'), 3)}</td>"
                         f"<td>{_fmt(entry.get('silence_opening'), 4)} ({_fmt(entry.get('closed_gap'), 4)} + "
                         f"{_fmt(entry.get('silence_margin'), 3)})</td>"
                         f"<td>{_fmt(entry.get('reference_silence_opening'), 4)}</td>"
                         f"<td>{_fmt(entry.get('subject_lag_pearson'), 3)} ({_fmt(entry.get('subject_lag_reference'), 3)}; "
                         f"{'&ndash;' if entry.get('subject_lag') is None else entry['subject_lag']})</td><td>{entry.get('frames')}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Training curves</h2>")
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
