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
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .fileio import atomic_write
from .lipsync import lip_sync_scores, mouth_opening, opening_readout, pearson
from .report import mouth_strip, read_training_curves, write_report

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["AudioEvaluation", "EvaluationResult", "envelope_ratio", "evaluate", "evaluate_audio", "interior_mask",
           "mouth_lmd", "read_training_curves"]

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
    mouth: Dict[str, float] = field(default_factory=dict)  # lipsync.LipSyncScores: pearson, amplitude_ratio, ...
    # Lip-code models: which half limits lip sync (see _mouth_parts): the mouth rendered from the frames' tracked
    # codes (the renderer alone) and the opening read out of the predicted codes (the audio predictor alone).
    mouth_parts: Dict[str, Union[float, str, None]] = field(default_factory=dict)
    head_alpha: Optional[float] = None  # mean rendered alpha inside the real head mask (1 = solid)
    # The same inside the mask eroded by INTERIOR_MARGIN of the frame: a see-through head lowers both, soft or
    # misaligned head edges (a head rendered smaller and upsampled) only the first.
    head_alpha_interior: Optional[float] = None
    face_psnr: Optional[float] = None  # PSNR inside the face box (landmarks' box, 10 % margin)
    face_psnr_mean_frame: Optional[float] = None  # the same for the mean training frame (baseline)
    psnr_mean_frame: Optional[float] = None  # whole-frame PSNR of the mean training frame (baseline)
    audio: List[dict] = field(default_factory=list)  # evaluate_audio entries (other voices)
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
             progress: bool = True, audio: Sequence[PathLike] = ()) -> EvaluationResult:
    """Render the held-out split and measure it; write ``metrics.json`` and ``report.html``.

    Every held-out frame is rendered as a user gets it (the output size: a smaller head render is upsampled
    and composited over the full-size torso and background) with its own audio, pose and blink, and compared
    with the real frame: PSNR / SSIM / LPIPS, the face-crop PSNR and the head's alpha inside the real head
    mask (with the mean training frame as a baseline), and, from landmarks detected the same way on both
    clips, the mouth LMD and the mouth opening (:mod:`gaussiantalker.lipsync`: Pearson correlation and
    amplitude ratio against the real mouth).

    Args:
        model: a :class:`gaussiantalker.infer.Talker`, a :class:`gaussiantalker.train.Model`, a model
            folder or a model name in ``workspace``.
        iteration, device, workspace: as for :func:`gaussiantalker.load`.
        out: folder for ``report.html`` (default: the model folder). ``metrics.json`` always goes to the
            model folder, merged with what training wrote.
        batch_size: frames per deformation/rasterizer call (split on out-of-memory).
        assets: asset folder (LPIPS weights, landmark model files).
        audio: driving audio files of other voices, scored without ground truth (:func:`evaluate_audio`).
    Returns:
        :class:`EvaluationResult`.
    Raises:
        as :func:`gaussiantalker.load`; ValueError when the held-out split is empty.
    """
    from .infer import Talker, load

    start = time.perf_counter()
    talker = model if isinstance(model, Talker) else load(model, iteration=iteration, device=device,
                                                          workspace=workspace, assets=assets)
    split = talker.full.split("val")
    n = len(split)
    if n == 0:
        raise ValueError(f"dataset {talker.data.path} has no held-out (val) frames to evaluate on")
    notes: List[str] = []
    shift = talker.model.clip_shift
    if shift:
        from .model.lipkernel import describe_shift

        notes.append(f"training measured this clip's sound {describe_shift(shift)} its picture: the held-out frames "
                     f"are rendered from their audio read {abs(shift)} frame(s) {'later' if shift > 0 else 'earlier'}, "
                     f"as in training (a new audio is read as it is)")
    tmp = Path(tempfile.mkdtemp(prefix="gt_eval_"))
    try:
        ours = _FrameStore(n, talker.height, talker.width, tmp, "ours")
        real = _FrameStore(n, talker.height, talker.width, tmp, "real")
        tracked = _FrameStore(n, talker.height, talker.width, tmp, "tracked") if talker.model.lip_dim else None
        base = _mean_training_frame(talker)
        voice = talker.full.frame_voice() if talker.gates_silence else None
        if talker.gates_silence and voice is None:
            notes.append(f"the mouth is not closed in the clip's silences here: {talker.full.path / 'aud.wav'} is "
                         "missing, and the voice activity is read from it")
        per = _render_and_score(talker, split, ours, real, base, batch_size, assets, progress, tracked, voice)
        if per["lpips"] is None:
            notes.append("LPIPS not computed: its weights are not in the asset folder (see `gaussiantalker assets`)")
        backend = _lmd_backend(talker.data.meta, notes)
        lm_ours, lm_real = _landmarks(ours, real, backend, assets, notes)
        side = _side_by_side(ours, real, lm_real)
        op_ours, op_real = mouth_opening(lm_ours), mouth_opening(lm_real)
        parts = _mouth_parts(talker, split, per, tracked, op_real, backend, assets, notes) if tracked else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lmd = _lmd(lm_ours, lm_real)
    scores = lip_sync_scores(op_ours, op_real)
    still = _still_mouth_note(op_real, talker.data.mouth_opening[torch.tensor(talker.data.train_ids)].numpy())
    if still:
        notes.append(still)
    gate = _silence_gate_note(talker)
    if gate:
        notes.append(gate)
    valid = lmd[np.isfinite(lmd)]
    per_frame = {"psnr": per["psnr"], "ssim": per["ssim"], "face_psnr": per["face_psnr"],
                 "head_alpha": per["head_alpha"], "head_alpha_interior": per["head_alpha_interior"],
                 "lmd": _nan_list(lmd), "opening_ours": _nan_list(op_ours),
                 "opening_real": _nan_list(op_real)}
    if "opening_tracked_codes" in per:
        per_frame["opening_tracked_codes"] = _nan_list(per["opening_tracked_codes"])
    if per["lpips"] is not None:
        per_frame["lpips"] = per["lpips"]
    result = EvaluationResult(
        model_dir=talker.model_dir, iteration=talker.iteration, split="val", frames=n,
        psnr=float(np.mean(per["psnr"])), ssim=float(np.mean(per["ssim"])),
        lpips=float(np.mean(per["lpips"])) if per["lpips"] is not None else None,
        lmd=float(valid.mean()) if valid.size else None, lmd_frames=int(valid.size), lmd_backend=backend,
        mouth=scores.as_dict(), mouth_parts=parts, head_alpha=_nanmean(per["head_alpha"]),
        head_alpha_interior=_nanmean(per["head_alpha_interior"]), face_psnr=_nanmean(per["face_psnr"]),
        face_psnr_mean_frame=_nanmean(per["face_psnr_base"]), psnr_mean_frame=_nanmean(per["psnr_base"]),
        per_frame=per_frame, notes=notes,
    )
    if audio:
        result.audio = [e.as_dict() for e in evaluate_audio(talker, audio, batch_size=batch_size, assets=assets,
                                                              progress=progress)]
    result.seconds = time.perf_counter() - start
    result.metrics_path = _write_metrics(talker.model_dir, result)
    result.report_path = write_report(Path(out) if out is not None else talker.model_dir, result, talker, side)
    log.info("evaluated %d held-out frames: mouth opening r %.3f, amplitude %.2f, LMD %s, head alpha %.4f, "
             "face PSNR %.2f dB (mean frame %.2f dB), PSNR %.2f dB, SSIM %.4f", n, scores.pearson,
             scores.amplitude_ratio, "-" if result.lmd is None else f"{result.lmd:.2f} px", result.head_alpha,
             result.face_psnr, result.face_psnr_mean_frame, result.psnr, result.ssim)
    return result


#: ``limit`` in :func:`_mouth_parts`: one half is named the limit when its r is under the other's by more than this
#: (each figure has a few hundredths of noise on a short held-out split); else both.
PARTS_MARGIN = 0.1


def _mouth_parts(talker, split, per: dict, tracked: _FrameStore, op_real: np.ndarray, backend: str, assets,
                 notes: List[str]) -> Dict[str, Union[float, str, None]]:
    """Which half of a lip-code model limits its lip sync on the held-out frames.

    ``tracked_codes_pearson`` / ``tracked_codes_amplitude``: the mouth rendered from the frames' *tracked* lip
    codes against the real one (the renderer alone: how faithfully it draws a mouth it is told); and
    ``predicted_readout_pearson``: the mouth opening read linearly out of the codes the audio predicts (least squares
    of the training frames' opening on their tracked codes) against the tracked opening (the audio predictor
    alone, no rendering); ``tracked_readout_pearson``: the same read-out of the tracked codes (how much of the
    opening the code holds). ``limit``: ``"renderer"``, ``"audio predictor"`` (the weaker half, by more than
    :data:`PARTS_MARGIN`) or ``"both"``. Also ``per["opening_tracked_codes"]``, the per-frame opening of that render."""
    from .preprocess.landmark_backends import BackendUnavailableError, detect

    k = talker.model.lip_dim
    train = talker.full.split("train")
    opening = talker.data.mouth_opening.numpy().astype(np.float64)
    op_train, op_val = opening[train.img_ids], opening[split.img_ids]
    readout = opening_readout(train.lips[:, :k].numpy(), op_train)

    def read_out(codes: List[torch.Tensor]) -> float:
        return pearson(readout(torch.cat(codes).numpy()), op_val)

    parts: Dict[str, Union[float, str, None]] = {
        "predicted_readout_pearson": read_out(per["codes_predicted"]),
        "tracked_readout_pearson": read_out(per["codes_tracked"]),
        "tracked_codes_pearson": None, "tracked_codes_amplitude": None, "limit": None}
    if not np.isfinite(op_real).any():
        return parts  # no landmarks on the real frames (the note says why): nothing to compare a render with
    try:
        det = detect(iter(tracked), backend=backend, assets=assets)
    except BackendUnavailableError as exc:
        notes.append(f"the mouth from the tracked lip codes not measured: {exc}")
        return parts
    points = det.points68.astype(np.float64)
    points[~det.found] = np.nan
    per["opening_tracked_codes"] = mouth_opening(points)
    scores = lip_sync_scores(per["opening_tracked_codes"], op_real)
    parts["tracked_codes_pearson"], parts["tracked_codes_amplitude"] = scores.pearson, scores.amplitude_ratio
    rendered, predicted = scores.pearson, float(parts["predicted_readout_pearson"])
    if np.isfinite(rendered) and np.isfinite(predicted):
        limit = ("renderer" if rendered + PARTS_MARGIN < predicted else
                 "audio predictor" if predicted + PARTS_MARGIN < rendered else "both")
        parts["limit"] = limit
        why = {"renderer": "the renderer limits lip sync here (its mouth is softer or smaller than the real one)",
               "audio predictor": "the audio predictor limits lip sync here (a longer clip, with more varied "
                                  "speech, teaches it more sounds)",
               "both": "both halves limit lip sync about equally here"}[limit]
        notes.append(f"where the mouth error is: rendered from the frames' tracked lip codes, the mouth follows the "
                     f"real one with r {rendered:.2f} (the renderer alone); read out of the codes the audio predicts, "
                     f"the opening follows it with r {predicted:.2f} (the audio predictor alone): {why}")
    return parts


def _nan_list(a) -> List[Optional[float]]:
    return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, np.float64)]


def _nanmean(values) -> Optional[float]:
    a = np.asarray([np.nan if v is None else v for v in values], np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


def _mean_training_frame(talker, count: int = 100) -> torch.Tensor:
    """``[3, H, W]``: the mean of up to ``count`` evenly spaced training targets at the output size (baseline)."""
    train = talker.full.split("train")
    picks = np.unique(np.linspace(0, len(train) - 1, min(count, len(train))).round().astype(int))
    acc = None
    for k in picks:
        t = train[int(k)].target
        acc = t.clone() if acc is None else acc.add_(t)
    return acc / len(picks)


def _face_box(lms: np.ndarray, height: int, width: int) -> tuple:
    """Rows / columns of the 68 landmarks' box with a 10 % margin, clipped: ``(r0, r1, c0, c1)``."""
    lo, hi = lms.min(0), lms.max(0)
    pad = 0.1 * (hi - lo)
    c0, r0 = np.floor(lo - pad).astype(int)
    c1, r1 = np.ceil(hi + pad).astype(int)
    return max(0, r0), min(height, r1), max(0, c0), min(width, c1)


def _render_and_score(talker, split, ours: _FrameStore, real: _FrameStore, base: torch.Tensor, batch_size: int,
                      assets, progress: bool, tracked: Optional[_FrameStore] = None,
                      voice: Optional[np.ndarray] = None) -> dict:
    """Render the split as a user gets it into ``ours`` (its targets into ``real``) and score each frame; with
    ``tracked`` (lip-code models) also render it from the frames' tracked lip codes there, and keep the codes
    (``per["codes_predicted"]``, ``per["codes_tracked"]``, ``[n, K]``). ``voice``: the voice activity of each
    ``img_id``'s audio (``TalkingHeadData.frame_voice``), for a model that closes the mouth in silences."""
    from tqdm.auto import tqdm

    from .data import _read_lms, collate
    from .infer import run_batches
    from .metrics import lpips, psnr, ssim
    from .render.video import to_uint8

    per: Dict[str, Optional[list]] = {"psnr": [], "ssim": [], "lpips": [], "face_psnr": [], "head_alpha": [],
                                      "head_alpha_interior": [], "face_psnr_base": [], "psnr_base": [],
                                      "codes_predicted": [], "codes_tracked": []}
    lip_dim = talker.model.lip_dim

    def one(a: int, b: int):
        batch = collate([split[k] for k in range(a, b)])
        v = None if voice is None else torch.from_numpy(voice[batch.img_id.numpy()].astype(np.float32))
        comp = talker.compose(batch.audio, batch.eye[:, 0], batch.c2w, batch.bg_torso, voice=v)
        extra = None
        if tracked is not None:
            codes = batch.lips[:, :lip_dim]
            with torch.no_grad():
                predicted = talker.model.lip_code(batch.audio.to(talker.device))
                if v is not None:
                    predicted = talker.model.gate_lips(predicted, v.to(talker.device))
                predicted = predicted.cpu()
            from_codes = talker.compose(batch.audio, batch.eye[:, 0], batch.c2w, batch.bg_torso, lips=codes)
            extra = (to_uint8(from_codes.image.clamp(0, 1).cpu()), predicted, codes)
        return comp.image.clamp(0, 1).cpu(), comp.alpha.cpu(), batch, extra

    bar = tqdm(total=len(split), unit="frame", desc="evaluate", disable=not progress)
    for a, b, (image, alpha, batch, extra) in run_batches(one, len(split), batch_size):
        if extra is not None:
            tracked.array[a:b] = extra[0]
            per["codes_predicted"].append(extra[1])
            per["codes_tracked"].append(extra[2])
        target, mask = batch.target, batch.head_mask
        per["psnr"] += psnr(image, target).tolist()
        per["psnr_base"] += psnr(base.expand_as(target), target).tolist()
        per["ssim"] += ssim(image, target).tolist()
        lp = lpips(image, target, assets=assets) if per["lpips"] is not None else None
        if lp is None:
            per["lpips"] = None
        else:
            per["lpips"] += lp.tolist()
        per["head_alpha"] += _mean_inside(alpha, mask)
        per["head_alpha_interior"] += _mean_inside(alpha, interior_mask(mask, INTERIOR_MARGIN))
        for j, img_id in enumerate(batch.img_id.tolist()):
            r0, r1, c0, c1 = _face_box(_read_lms(talker.full.path / "ori_imgs" / f"{img_id}.lms"), talker.height,
                                       talker.width)
            crop = (slice(None), slice(r0, r1), slice(c0, c1))
            per["face_psnr"].append(float(psnr(image[j][crop], target[j][crop])))
            per["face_psnr_base"].append(float(psnr(base[crop], target[j][crop])))
        ours.array[a:b] = to_uint8(image)
        real.array[a:b] = to_uint8(target)
        bar.update(b - a)
    bar.close()
    return per


def _silence_gate_note(talker) -> Optional[str]:
    """A note when renders keep the predicted mouth in silences because training chose so for this person."""
    model = talker.model
    if not model.has_silence_gate or talker.gates_silence or talker.close_in_silence is False:
        return None
    from .model.io import ModelInfo

    info = {}
    if (talker.model_dir / "model.json").is_file():
        info = ModelInfo.read(talker.model_dir / "model.json").lip_predictor or {}
    if "cv_r_open_in_silence" in info and "cv_r_closed_in_silence" in info:
        why = (f"closing it there departs from this person's footage (cross-validated mouth r of the training frames "
               f"{info['cv_r_open_in_silence']:.3f} as predicted, {info['cv_r_closed_in_silence']:.3f} closed in the "
               "clip's silences), as for someone who rests with the lips apart or breathes in through the mouth")
    else:
        why = ("training could not check whether closing it suits this person (too few frames to cross-validate, or "
               "no aud.wav)")
    return (f"this model keeps the mouth the audio predicts in silences: {why}; render with close_in_silence=True "
            "(infer --close_in_silence yes) to close it")


#: Held-out frames whose real mouth-opening std is under this fraction of the training frames' say little about
#: lip sync (a short clip that ends in a pause): evaluate notes it.
STILL_MOUTH = 0.2


def _still_mouth_note(held_out: np.ndarray, training: np.ndarray) -> Optional[str]:
    """A note when the held-out frames' real mouth hardly moves, else None."""
    held_out, training = np.asarray(held_out, np.float64), np.asarray(training, np.float64)
    held_out, training = held_out[np.isfinite(held_out)], training[np.isfinite(training)]
    if held_out.size < 3 or training.size < 3:
        return None
    a, b = float(np.std(held_out)), float(np.std(training))
    if not b > 0 or a >= STILL_MOUTH * b:
        return None
    return (f"the real mouth hardly moves on the held-out frames (opening std {a:.4f} against {b:.4f} on the "
            "training frames: the clip may end in a pause): mouth r and amplitude say little here; judge lip sync "
            "with `evaluate --audio` on other speech, or train on a longer clip")


#: The head mask's border left out of ``head_alpha_interior``: this fraction of the frame's shorter side (8 px at 512).
INTERIOR_MARGIN = 0.015


def interior_mask(mask: torch.Tensor, margin: float = INTERIOR_MARGIN) -> torch.Tensor:
    """``mask`` ``[B, 1, H, W]`` (0 / 1) eroded by ``round(margin * min(H, W))`` pixels (a square neighbourhood)."""
    px = max(1, round(margin * min(mask.shape[-2:])))
    outside = (mask <= 0.5).float()
    return (torch.nn.functional.max_pool2d(outside, 2 * px + 1, stride=1, padding=px) == 0).to(mask.dtype)


def _mean_inside(alpha: torch.Tensor, mask: torch.Tensor) -> List[Optional[float]]:
    """Per frame, the mean of ``alpha`` inside ``mask`` (None where the mask is empty)."""
    inside = mask.flatten(1).sum(1)
    return [float(x) if m > 0 else None for x, m in zip((alpha * mask).flatten(1).sum(1) / inside.clamp_min(1), inside)]


def _lmd_backend(meta: dict, notes: List[str]) -> str:
    name = str((meta.get("backends") or {}).get("landmarks") or "")
    if name in _LMD_BACKENDS:
        return name
    notes.append(f"LMD uses mediapipe landmarks (the dataset's landmark backend is {name or 'not recorded'!r})")
    return "mediapipe"


def _landmarks(ours: _FrameStore, real: _FrameStore, backend: str, assets, notes: List[str]):
    """68-point landmarks ``[F, 68, 2]`` of both clips (NaN rows where a side has no face)."""
    from .preprocess.landmark_backends import BackendUnavailableError, detect

    n = ours.array.shape[0]
    nan = np.full((n, 68, 2), np.nan)
    try:
        a = detect(iter(ours), backend=backend, assets=assets)
        b = detect(iter(real), backend=backend, assets=assets)
    except BackendUnavailableError as exc:
        notes.append(f"LMD and mouth opening not computed: {exc}")
        return nan, nan.copy()
    pa, pb = a.points68.astype(np.float64), b.points68.astype(np.float64)
    both = a.found & b.found
    pa[~both], pb[~both] = np.nan, np.nan
    missing = int((~both).sum())
    if missing == n:
        notes.append(f"LMD not computed: {backend} found no face pair in any of the {n} frames")
    elif missing:
        notes.append(f"LMD and mouth opening over {n - missing} of {n} frames ({missing} without a face on one side)")
    return pa, pb


def _lmd(lm_ours: np.ndarray, lm_real: np.ndarray) -> np.ndarray:
    from .metrics import landmark_distance

    ok = np.isfinite(lm_ours).all(axis=(1, 2)) & np.isfinite(lm_real).all(axis=(1, 2))
    d = np.full(len(ok), np.nan)
    if ok.any():
        d[ok] = landmark_distance(torch.from_numpy(lm_ours[ok]), torch.from_numpy(lm_real[ok])).numpy()
    return d


def _side_by_side(ours: _FrameStore, real: _FrameStore, lms: np.ndarray) -> List[tuple]:
    """``(index, image)`` of a few evenly spaced frames: ground truth | ours, mouth crops enlarged below."""
    n = ours.array.shape[0]
    picks = sorted(set(np.linspace(0, n - 1, min(_SIDE_BY_SIDE, n)).round().astype(int).tolist()))
    return [(i, mouth_strip(real.array[i], ours.array[i], lms[i])) for i in picks]


def _write_metrics(model_dir: Path, result: EvaluationResult) -> Path:
    entry = result.summary()
    entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return _merge_metrics(model_dir, "evaluation", entry)


def _merge_metrics(model_dir: Path, key: str, value) -> Path:
    """Set ``key`` in the model's ``metrics.json`` (atomically), keeping what else it holds."""
    path = Path(model_dir) / "metrics.json"
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; it is replaced", path)
        if not isinstance(data, dict):
            data = {}
    data[key] = value
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))




# --------------------------------------------------------------------------------------------------
# other voices: no ground truth, the mouth against the driving audio


#: Margin over the subject's closed-mouth gap that still counts as closed in a silence: this fraction of the
#: subject's speaking range (90th minus 10th percentile of the training frames' mouth opening).
SILENCE_MARGIN = 0.25
#: The real footage's own mouth-vs-envelope correlation below which it is no reference for other voices (no ratio):
#: some speakers open the mouth in their pauses (breathing, smiling), and then a mouth that follows the energy of
#: another voice is neither better nor worse than the subject.
MIN_REFERENCE = 0.1
#: The subject's own lead or lag of the mouth on its audio's energy is searched within this many frames: a mouth
#: often opens before the sound it makes (the German clip's by 2 frames, 80 ms).
SUBJECT_MAX_LAG = 2


def envelope_ratio(pearson: float, reference: float) -> float:
    """``pearson / reference``, or nan when the reference (the real footage with its own audio) is below
    ``MIN_REFERENCE`` or not finite: no scale to judge other voices by."""
    return pearson / reference if np.isfinite(reference) and reference >= MIN_REFERENCE else float("nan")


@dataclass
class AudioEvaluation:
    """A render driven by some audio, scored against that audio (:func:`gaussiantalker.lipsync.audio_sync_scores`)."""

    audio: str
    frames: int
    envelope_pearson: float  # mouth opening vs the audio's energy envelope (dB), same frames
    best_lag: int
    best_lag_pearson: float
    reference_pearson: float  # the real footage's mouth vs its own audio (each frame's sound as the model reads it)
    ratio: float  # envelope_pearson / reference_pearson; nan when the reference is below MIN_REFERENCE
    silent_frames: int
    silence_opening: Optional[float]  # mean mouth opening inside the audio's silences
    closed_gap: float  # the subject's closed-mouth opening (10th percentile of its training frames)
    silence_margin: float  # SILENCE_MARGIN x the subject's speaking range
    closes_in_silence: Optional[bool]  # silence_opening <= closed_gap + silence_margin (None without silences)
    opening_std: float
    # For scale: the real footage's mean opening inside its own audio's silences (None without silences, or
    # without the clip's audio). Real speakers often keep the mouth a little open in short pauses.
    reference_silence_opening: Optional[float] = None
    # The same comparison at the subject's own lead (or lag) of the mouth on the sound: the shift within
    # +-SUBJECT_MAX_LAG frames where the real footage follows its own audio best (mouth later than audio when
    # > 0), the real footage's correlation there, the render's at that same shift, and their ratio. One shift
    # chosen on the real footage (hundreds of frames), not per render: no selection on the rendered side.
    subject_lag: Optional[int] = None
    subject_lag_reference: float = float("nan")
    subject_lag_pearson: float = float("nan")
    subject_lag_ratio: float = float("nan")

    def as_dict(self) -> dict:
        return _json_safe(asdict(self))


def evaluate_audio(model, audio: Sequence[PathLike], batch_size: int = 16, assets: Optional[PathLike] = None,
                   progress: bool = True, device="auto", workspace: Optional[PathLike] = None,
                   write: bool = False) -> List[AudioEvaluation]:
    """Score renders driven by other voices, without ground truth: does the mouth follow the audio's energy
    (as well as the real footage follows its own audio), and does it close in the audio's silences?

    Args:
        model: as for :func:`evaluate`.
        audio: media files with an audio stream.
        write: also store the entries under ``audio_evaluation`` in the model's ``metrics.json``.
    Returns:
        one :class:`AudioEvaluation` per file.
    """
    from .audio import load_audio
    from .infer import Talker, load
    from .lipsync import audio_envelope, audio_sync_scores, best_lag, closed_gap, lagged_pearson

    talker = model if isinstance(model, Talker) else load(model, device=device, workspace=workspace, assets=assets)
    data = talker.data
    real = data.mouth_opening.numpy().astype(np.float64)
    train = real[np.asarray(data.train_ids)]
    closed = closed_gap(train)
    margin = SILENCE_MARGIN * float(np.nanpercentile(train, 90) - np.nanpercentile(train, 10))
    wav = Path(data.path) / "aud.wav"
    reference, reference_silence, lag, lag_reference = float("nan"), None, None, float("nan")
    if wav.is_file():
        # Each frame's sound where the model reads it (a clip whose sound is off its picture: training measured the
        # offset, and the footage is scored against its sound in step too, as the held-out frames are rendered).
        rows = data.frame_audio_rows().numpy()
        envelope = audio_envelope(load_audio(wav), int(rows.max()) + 1)[rows]
        own = audio_sync_scores(real, envelope)  # the footage, its own audio
        reference, reference_silence = own.envelope_pearson, own.silence_opening
        lag, lag_reference = best_lag(envelope, real, SUBJECT_MAX_LAG)
    backend = _lmd_backend(data.meta, [])
    out: List[AudioEvaluation] = []
    for item in audio:
        samples = load_audio(item)
        tmp = Path(tempfile.mkdtemp(prefix="gt_eval_audio_"))
        try:
            n = int(talker.features(samples).shape[0])
            store = _FrameStore(n, talker.height, talker.width, tmp, "ours")
            for k, frame in enumerate(talker.frames(samples, batch_size=batch_size)):
                store.array[k] = frame
            from .preprocess.landmark_backends import detect

            found = detect(iter(store), backend=backend, assets=assets)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        pts = found.points68.astype(np.float64)
        pts[~found.found] = np.nan
        opening = mouth_opening(pts)
        envelope = audio_envelope(samples, n)
        sc = audio_sync_scores(opening, envelope)
        lagged = lagged_pearson(envelope, opening, lag) if lag is not None else float("nan")
        entry = AudioEvaluation(
            audio=str(item), frames=n, envelope_pearson=sc.envelope_pearson, best_lag=sc.best_lag,
            best_lag_pearson=sc.best_lag_pearson, reference_pearson=reference,
            ratio=envelope_ratio(sc.envelope_pearson, reference),
            silent_frames=sc.silent_frames, silence_opening=sc.silence_opening, closed_gap=closed,
            silence_margin=margin,
            closes_in_silence=None if sc.silence_opening is None else bool(sc.silence_opening <= closed + margin),
            opening_std=sc.opening_std, reference_silence_opening=reference_silence, subject_lag=lag,
            subject_lag_reference=lag_reference, subject_lag_pearson=lagged,
            subject_lag_ratio=envelope_ratio(lagged, lag_reference))
        log.info("%s: mouth vs audio envelope r %.3f (real footage %.3f), opening in %d silent frames %s "
                 "(closed %.4f + margin %.4f)", item, entry.envelope_pearson, reference, entry.silent_frames,
                 "-" if entry.silence_opening is None else f"{entry.silence_opening:.4f}", closed, margin)
        out.append(entry)
    if write:
        _merge_metrics(talker.model_dir, "audio_evaluation", [e.as_dict() for e in out])
    return out
