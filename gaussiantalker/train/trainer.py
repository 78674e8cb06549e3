"""The two-stage trainer (reference §7, with §10's fixes), resumable from its checkpoints.

Iterations: the coarse stage runs ``coarse_iterations`` (batch 1, no conditions, densification), then the
fine stage runs ``iterations`` (batch ``batch_size``, audio/eye/camera conditions). Each stage counts its
own iterations from 1 (learning-rate schedules, densification, SH degree, as the original); checkpoints
are named by the *global* iteration (coarse + fine), snapshots ``point_cloud/iteration_<k>`` by the
fine-stage iteration (``--iteration 10000`` after ``--iterations 10000``, as the original).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch

from ..camera import cameras_from_transforms, project_points
from ..config import TrainConfig, load_config
from ..devices import resolve_device
from ..distributed import SINGLE, Comm, batch_part
from ..fileio import atomic_write
from ..model.io import ModelInfo, save_iteration, save_model_info
from ..model.networks import frame_dropout
from ..model.talker import LIP_BASES, STAGES, GaussianTalkerModel
from ..model.types import Conditions
from ..progress import Progress, ProgressCallback
from ..render.rasterize import render_batch
from ..workspace import DEFAULT_WORKSPACE, Workspace, validate_name
from .checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .monitor import Monitor
from .objective import Objective, Share, psnr
from .parallel import SilentMonitor, batch_share, no_frames, reduce_step
from .sampler import BatchSampler, FrameOrder
from .schedule import LearningRates
from .strategy import DensifyStrategy

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)

LIP_GAIN_MIN_R = 0.3
"""Kernel lip predictor: components whose cross-validated correlation with the tracked code is below this keep
gain 1 (a regression's shrunk swing is restored only where the audio predicts the component)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, named with its iteration)."""


@dataclass
class Model:
    """A trained (or partly trained) model folder."""

    path: Path
    name: str
    iteration: int  # the newest saved fine-stage iteration (point_cloud/iteration_<k>)
    config: TrainConfig
    audio_kind: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Progress:
    """Where training stands (saved in checkpoints)."""

    stage: str = "coarse"
    stage_iteration: int = 0  # iterations done in ``stage``
    consumed: int = 0  # training samples drawn in ``stage``
    global_iteration: int = 0


def _dataset_path(dataset_or_path: Any) -> Path:
    path = getattr(dataset_or_path, "path", dataset_or_path)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    return path


def _workspace_for(data_path: Path, workspace: PathLike | None) -> Workspace:
    if workspace is not None:
        return Workspace.at(workspace)
    if data_path.parent.name == "data":  # <workspace>/data/<name>
        return Workspace.at(data_path.parent.parent)
    return Workspace.at(DEFAULT_WORKSPACE)


def _resolve_config(config: Any, model_dir: Path, resuming: bool) -> TrainConfig:
    saved = model_dir / "config.json"
    if resuming and saved.is_file():
        cfg = TrainConfig.from_json(saved)
        if config is not None:
            given = config if isinstance(config, TrainConfig) else load_config(config)
            a, b = given.to_dict(), cfg.to_dict()
            a.pop("source"), b.pop("source")
            a["OptimizationParams"].pop("iterations"), b["OptimizationParams"].pop("iterations")
            if a != b:
                log.warning("resuming %s with its saved configuration (%s); the configuration given differs "
                            "and is ignored", model_dir, saved)
        return cfg
    if isinstance(config, TrainConfig):
        return config
    return load_config(config)


#: Training frames (evenly spaced) whose lip crops decide :func:`mouth_region`.
MOUTH_REGION_FRAMES = 32

SILENCE_GATE_MAX_LOSS = 0.02
"""Renders close the mouth in silences by default unless that lowers the cross-validated r of the training frames'
mouth read from the audio by more than this (a subject who holds the mouth open in its own pauses)."""
SILENCE_GATE_MIN_R = LIP_GAIN_MIN_R
"""... and only when that r, as predicted, is at least this: a predictor that cannot read the mouth from the audio
says nothing by the comparison about how the person holds the mouth in pauses."""


def mouth_region(xyz: torch.Tensor, cameras, rects: torch.Tensor, margin: float = 0.25, depth: float = 0.25,
                 share: float = 0.5) -> torch.Tensor:
    """The Gaussians that lie at the mouth: bool ``[N]``.

    A Gaussian ``xyz [N, 3]`` counts in a frame (camera ``b`` of the batched ``cameras``) when it projects into the
    frame's lip crop ``rects [B, 4]`` (``r0, r1, c0, c1``, as :func:`gaussiantalker.data.lips_rect`) grown by ``margin``
    of its side on every side, and lies no deeper than the nearest such Gaussian plus ``depth`` x the cloud's largest
    extent (the face, not the back of the head behind it); it is at the mouth when it counts in at least ``share`` of
    the frames.
    """
    uv = project_points(xyz, cameras)  # [B, N, 2] (x = column, y = row)
    hom = torch.cat([xyz, torch.ones_like(xyz[:, :1])], 1).to(cameras.w2c.dtype)
    z = (hom @ cameras.w2c.transpose(-1, -2))[..., 2]  # [B, N] camera-space depth
    r0, r1, c0, c1 = (rects[:, i:i + 1].to(uv.dtype) for i in range(4))
    grow = margin * (r1 - r0)
    inside = ((uv[..., 1] >= r0 - grow) & (uv[..., 1] <= r1 + grow) & (uv[..., 0] >= c0 - grow)
              & (uv[..., 0] <= c1 + grow) & (z > 0))
    near = torch.where(inside, z, torch.full_like(z, float("inf"))).min(1, keepdim=True).values
    reach = depth * float((xyz.max(0).values - xyz.min(0).values).max())
    inside &= z <= near + reach
    return inside.float().mean(0) >= share


class Trainer:
    """One training run on one dataset into one model folder. ``run()`` trains (or resumes) to the end."""

    def __init__(self, data, config: TrainConfig, model_dir: Path, device: torch.device, progress: bool = True,
                 assets: PathLike | None = None, callback: ProgressCallback | None = None, comm: Comm = SINGLE) -> None:
        self.data, self.config, self.model_dir = data, config, Path(model_dir)
        self.device, self.progress, self.assets, self.callback = device, progress, assets, callback
        #: the ranks of a data-parallel run (``docs/distributed.md``); SINGLE = one process, every collective a no-op
        self.comm = comm
        o = config.optimization
        self.totals = {"coarse": int(o.coarse_iterations), "fine": int(o.iterations)}
        h = config.hidden
        if float(o.lip_code_predicted_share) > 0 and not (int(h.lip_code_dim) > 0 and h.lip_predictor == "kernel"):
            log.warning("lip_code_predicted_share %.2f is ignored: it needs the kernel lip predictor (lip_code_dim > 0, "
                        "lip_predictor 'kernel'; this config: %d, %r)", float(o.lip_code_predicted_share),
                        int(h.lip_code_dim), h.lip_predictor)
        self.train_split = data.split("train")
        self.extent = self._camera_extent()
        self.lrs = LearningRates(config, self.extent)
        self.objective = Objective(config, device, assets)
        self.state = _Progress()
        self.model: GaussianTalkerModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lip_optimizer: torch.optim.Optimizer | None = None
        self._lip_loss: torch.Tensor | None = None
        self._bank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._voice: tuple[np.ndarray | None] | None = None  # (the clip's voice activity per img_id,), once read
        self._folds_cv: torch.Tensor | None = None  # the kernel fit's out-of-fold predictions (raw), until used
        self._phone_weight: float | None = None  # phonetic datasets: the articulation values' weight chosen by CV
        # the (fit, tracked, cv) the choice computed at the chosen weight, until the fit takes them
        self._chosen_folds: tuple[Callable[[torch.Tensor | None], Any], torch.Tensor, torch.Tensor | None] | None = None
        self._phone_scores: dict[str, float] | None = None  # the choice's cross-validated r with and without phones
        self._gate_scores: dict[str, Any] = {}  # the silence gate's choice (see _choose_silence_gate)
        self._lip_summary: dict[str, Any] | None = None  # what the predictor's fit chose, for model.json
        self._predicted: torch.Tensor | None = None  # _predicted_lips' cache
        self._train_row: dict[int, int] = {}  # image id -> row of the training split
        self.strategy: DensifyStrategy | None = None
        self._order: FrameOrder | None = None
        self._part = (0, 1, 1)  # this rank's rows [lo, hi) of the global batch, and its size

    # ------------------------------------------------------------------ setup

    def _camera_extent(self) -> float:
        """The scene extent that scales learning rates and densification: the cameras' spread (the original's
        ``cameras_extent``), at least ``min_extent`` (see :class:`~gaussiantalker.config.OptimizationParams`)."""
        extent = float(self.data.camera_extent)
        floor = float(self.config.optimization.min_extent)
        if extent > 1e-6 or floor > 0:
            if extent < floor:
                log.info("%s: camera extent %.3g (little head motion) raised to min_extent %.3g", self.data.path,
                         extent, floor)
            return max(extent, floor)
        xyz, _ = self.data.point_cloud()
        radius = float(1.1 * (xyz - xyz.mean(0)).norm(dim=1).max())
        log.warning("%s: the training cameras do not move (extent %.3g); using the point cloud's radius %.3g "
                    "as the scene extent", self.data.path, extent, radius)
        return radius

    def _fresh(self) -> None:
        seed = int(self.config.optimization.seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        xyz, rgb = self.data.point_cloud()
        gen = torch.Generator().manual_seed(seed)
        self.model = GaussianTalkerModel.from_point_cloud(xyz, rgb, self.config, self.data.audio_dim, gen)
        from ..audio.features import energy_column
        from ..audio.windows import speech_statistics

        mean, std = speech_statistics(self.train_split.audio.numpy(), energy_column(self.data.audio_kind))
        with torch.no_grad():
            self.model.audio_mean.copy_(torch.from_numpy(mean).float())
            self.model.audio_std.copy_(torch.from_numpy(std).float())
        self.model.to(self.device).train()
        self.state = _Progress()
        self.lip_optimizer = self._make_lip_optimizer()
        if self.model.lip_kernel:
            self._fit_lip_kernel()
        self._begin_stage("coarse")

    def _begin_stage(self, stage: str) -> None:
        if stage == "fine":
            fresh = not bool(self.model.fine_ready)
            if fresh:
                self._calibrate_lips()
            self.model.start_fine()
            if fresh and self.model.lip_blend:
                self._set_lip_region()
            self._broadcast_model()  # the lip calibration ran on every rank: rank 0's values for all
        self.optimizer = self._make_optimizer(stage)
        self.strategy = self._make_strategy(stage)
        self.strategy.reset(self.model.num_points, self.device)

    def _make_strategy(self, stage: str) -> DensifyStrategy:
        strategy = DensifyStrategy(self.config, self.extent, stage)
        if not self.comm.single:
            strategy.reduce_max = lambda t: self.comm.max_(t, what="densification statistics (max radii)")
        return strategy

    def _broadcast_model(self) -> None:
        """Rank 0's parameters and buffers to every rank (no-op with one process)."""
        if not self.comm.single:
            self.comm.broadcast_(list(self.model.state_dict().values()), what="model broadcast")

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        allowed = set(self.config.optimization.train_l)
        allowed |= {name for name, (_, _, group) in LIP_BASES.items() if group in allowed}  # trained with their attribute
        lrs = self.lrs.at(0)
        groups = [{"params": params, "lr": lrs[name], "name": name}
                  for name, params in self.model.parameter_groups(stage).items() if name in allowed]
        if stage == "fine" and not self.config.hidden.train_tri_plane:
            groups = [g for g in groups if g["name"] != "grid"]
        return torch.optim.Adam(groups, lr=0.0, eps=1e-15)

    # ------------------------------------------------------------------ the audio -> lip-code predictor

    def _make_lip_optimizer(self) -> torch.optim.Optimizer | None:
        params = self.model.lip_parameters()
        if not params:
            return None
        return torch.optim.AdamW(params, lr=float(self.config.optimization.lip_code_lr), weight_decay=0.01)

    def _lip_pool(self, stage: str) -> int:
        """Training frames the predictor learns from: all but the held-out tail in the coarse stage."""
        n = len(self.train_split)
        hold = int(n * float(self.config.optimization.lip_code_holdout))
        return n - hold if stage == "coarse" and n - hold >= 8 else n

    def _train_openings(self) -> torch.Tensor:
        """``[n]``: the tracked mouth opening of each training frame (NaN where a frame has none)."""
        return self.data.mouth_opening[torch.tensor(self.train_split.img_ids)]

    def _closed_code(self) -> torch.Tensor:
        """``[K]``: the mean tracked code of the training frames whose mouth is most closed (opening at or below
        its 10th percentile): the target for silence and noise."""
        opening = self._train_openings()
        closed = opening <= torch.quantile(opening[torch.isfinite(opening)], 0.1)
        return self.train_split.lips[closed, : self.model.lip_dim].mean(0)

    def _lip_bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Extra (audio windows ``[M, 8, 16, D]``, codes ``[M, K]``, the training-split row each one copies ``[M]``
        (-1 for silence and noise)) for the predictor, mfcc and phonetic datasets only: the
        training audio with white noise at 20 and 10 dB SNR (same codes), and noise alone or silence at several
        levels (the closed-mouth code), so that other microphones and the pauses of other voices do not open
        the mouth. Computed once (mfcc runs ~600x real time, phonetic ~5x); None for other feature kinds or without
        aud.wav."""
        if not self.config.optimization.lip_code_augment:
            return None
        if self._bank is not None or not self.model.lip_dim:
            return self._bank
        from ..audio import extract_features, load_audio
        from ..audio.features import MFCC_KINDS
        from ..data import audio_context

        wav = Path(self.data.path) / "aud.wav"
        kind = self.data.audio_kind
        if kind not in MFCC_KINDS or not wav.is_file():
            return None

        samples = load_audio(wav)
        rng = np.random.default_rng(int(self.config.optimization.seed))
        split = self.train_split
        aud = split.audio_rows
        idx = torch.arange(len(split))
        loud = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) or 1e-3
        windows, codes, rows = [], [], []
        for snr_db in (20.0, 10.0):
            noisy = samples + rng.standard_normal(samples.shape).astype(np.float32) * loud * 10 ** (-snr_db / 20)
            w = torch.from_numpy(extract_features(noisy, kind, num_frames=self.data.num_frames).windows)
            windows.append(audio_context(w[aud], idx))
            codes.append(split.lips[:, : self.model.lip_dim])
            rows.append(idx)
        frames = 50  # 2 s of each level
        closed = self._closed_code().expand(frames, -1)
        for level_db in (None, -70.0, -55.0, -40.0):
            noise = np.zeros(frames * 640, np.float32) if level_db is None else \
                rng.standard_normal(frames * 640).astype(np.float32) * 10 ** (level_db / 20)
            w = torch.from_numpy(extract_features(noise, kind, num_frames=frames).windows)
            windows.append(audio_context(w, torch.arange(frames)))
            codes.append(closed)
            rows.append(torch.full((frames,), -1, dtype=torch.long))
        self._bank = (torch.cat(windows), torch.cat(codes), torch.cat(rows))
        log.info("lip code: %d extra predictor samples (noisy speech, silence and noise -> closed mouth)",
                 self._bank[0].shape[0])
        return self._bank

    def _lip_step(self, stage: str) -> None:
        """One step of the audio -> lip-code regression on random training frames (MSE on the tracked codes,
        feature noise as augmentation). Seeded by the iteration, so a resumed run draws the same batches."""
        if self.lip_optimizer is None:
            return
        from ..data import audio_context

        o, model = self.config.optimization, self.model
        g = torch.Generator().manual_seed(int(o.seed) * 7_919 + self.state.global_iteration)
        batch = int(o.lip_code_batch)
        bank = self._lip_bank() if stage == "fine" else None  # the coarse stage leaves the tail for calibration
        extra = batch // 4 if bank is not None else 0
        idx = torch.randint(0, self._lip_pool(stage), (batch - extra,), generator=g)
        audio = audio_context(self.train_split.audio, idx)
        target = self.train_split.lips[idx, : model.lip_dim]
        if extra:
            pick = torch.randint(0, bank[0].shape[0], (extra,), generator=g)
            audio, target = torch.cat([audio, bank[0][pick]]), torch.cat([target, bank[1][pick]])
        audio = audio + 0.1 * torch.randn(audio.shape, generator=g)
        loss = (model.predict_lips(audio.to(self.device)) - target.to(self.device)).square().mean()
        self.lip_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not self.comm.single:
            # Every rank ran this same step (same frames, same RNG): averaging the gradients only guards against
            # kernels that round differently from run to run, so that the ranks stay bit-identical.
            params = [p for g in self.lip_optimizer.param_groups for p in g["params"]]
            self.comm.reduce_gradients(params, what="lip predictor gradient all-reduce")
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.comm.world)
        self.lip_optimizer.step()
        self.lip_optimizer.zero_grad(set_to_none=True)
        self._lip_loss = loss.detach()

    @torch.no_grad()
    def _fit_lip_kernel(self) -> None:
        """Fit the kernel audio -> lip-code predictor to every training frame (and the noise / silence samples), and
        calibrate it: per component, gain = std(tracked) / std(predicted) in [1, 2] where the two correlate at least
        ``LIP_GAIN_MIN_R`` (else 1), the predictions coming from a 5-fold contiguous cross-validation over the
        training frames (each fold's noisy copies left out with it)."""
        model = self.model
        k = model.lip_dim
        self._align_clip_audio()
        fit, true, cv = self._folds()
        gain = torch.ones(k)
        r: list[float] = []
        if cv is not None:
            r = [float(torch.corrcoef(torch.stack([cv[:, j], true[:, j]]))[0, 1]) for j in range(k)]
            # Only components the audio predicts (r >= 0.3) are amplified: scaling up the others adds noise.
            gain = torch.where(torch.tensor(r) >= LIP_GAIN_MIN_R,
                               (true.std(0) / cv.std(0).clamp_min(1e-6)).clamp(1.0, 2.0), torch.ones(k))
            log.info("lip code: cross-validated correlation per component %s, gain %s", [round(v, 2) for v in r],
                     [round(float(v), 2) for v in gain])
        else:
            log.info("lip code: %d training frames, too few to cross-validate; gain 1", true.shape[0])
        model.lip_regression.load_state_dict(fit(None).state_dict())
        model.lip_gain.copy_(gain.to(model.lip_gain.device))
        self._set_lip_range(true)
        self._choose_silence_gate(true, cv)
        self._folds_cv = cv
        phones = self._phone_weight if self.data.audio_kind == "phonetic" else None
        self._lip_summary = {"audio_shift_frames": int(model.clip_shift), "phone_weight": phones,
                             "cv_r_per_component": [round(v, 4) for v in r],
                             "gain": [round(float(v), 4) for v in gain], **(self._phone_scores or {}),
                             **self._gate_scores}

    def _choose_silence_gate(self, true: torch.Tensor, cv: torch.Tensor | None) -> None:
        """Whether renders close the mouth in the driving audio's silences by default (``model.lip_gate``): yes when
        closing it in the training clip's own silences does not lower the cross-validated r of the training frames'
        mouth (read out of the out-of-fold predicted codes) by more than ``SILENCE_GATE_MAX_LOSS``, and that r is at
        least ``SILENCE_GATE_MIN_R`` (``SadTalker__WDA_KatieHill_000``, 8 s: -0.07, and closing her wide smile after
        she speaks cost her held-out r 0.73 -> 0.06). Some people rest with the lips apart or breathe in through the
        mouth in their pauses; for them a closed mouth in silence
        departs from the footage (``DFRF__french``: held-out r 0.72 -> 0.47), and renders close it only when asked.
        No: without cross-validation or without the clip's ``aud.wav``."""
        from ..lipsync import opening_readout, pearson

        model, on = self.model, False
        self._gate_scores = {}
        voice = self._frame_voice()
        if cv is not None and voice is not None:
            opening = self._train_openings().numpy()
            read = opening_readout(true.numpy(), opening)
            dev = model.lip_closed.device
            free = model.calibrate_lips(cv.to(dev))
            v = torch.from_numpy(voice[np.asarray(self.train_split.img_ids)]).float().to(dev)
            r_free = pearson(read(free.cpu().numpy()), opening)
            r_gated = pearson(read(model.gate_lips(free, v).cpu().numpy()), opening)
            on = r_free >= SILENCE_GATE_MIN_R and r_gated >= r_free - SILENCE_GATE_MAX_LOSS
            self._gate_scores = {"cv_r_open_in_silence": round(r_free, 4), "cv_r_closed_in_silence": round(r_gated, 4),
                                 "closes_in_silence": bool(on)}
            log.info("lip code: cross-validated r of the mouth read from the audio %.3f as predicted, %.3f closed in "
                     "the clip's silences: renders %s", r_free, r_gated,
                     "close the mouth in silences" if on else
                     "keep the mouth the audio predicts in silences, "
                     + ("as this subject holds it" if r_free >= SILENCE_GATE_MIN_R else
                        "the predictor reading too little of the mouth to tell") + " (close_in_silence=True closes it)")
        model.lip_gate.fill_(1.0 if on else 0.0)

    def _align_clip_audio(self) -> None:
        """Measure the offset of the clip's sound against its picture (``lip_kernel_align``): the shift of the audio
        that predicts the training frames' mouths best, cross-validated (:func:`~gaussiantalker.model.\
lipkernel.measure_audio_shift`); the predictor is then fitted on each frame's audio read that many frames later, so
        that a clip whose sound is a few frames off its picture still teaches a mouth in step with the sound, and a
        new audio drives the mouth in step. Saved with the model (``clip_shift``); renders of the clip's own audio
        read it shifted the same way (:meth:`_use_clip_shift`)."""
        from ..model.lipkernel import FRAME_MS, SHIFTS, describe_shift, measure_audio_shift

        model, o = self.model, self.config.optimization
        shift = 0
        self._read_audio_shifted(0)  # measured against the clip as its transforms say (the data may come shifted)
        if o.lip_kernel_align:
            split = self.train_split
            start = time.perf_counter()
            shift, scores = measure_audio_shift(split.audio, split.lips[:, : model.lip_dim], self._train_openings(),
                                                float(o.lip_kernel_ridge),
                                                self._kernel_weights(float(o.lip_kernel_phone_weight)))
            if scores:
                log.info("lip code: cross-validated r of the mouth read from the audio shifted by %+d .. %+d frames: "
                         "%s (%.1f s)", min(SHIFTS), max(SHIFTS),
                         ", ".join(f"{s:+d}: {r:.3f}" for s, r in scores.items()), time.perf_counter() - start)
                if shift:
                    log.warning("lip code: this clip's sound seems %s its picture (frames of %d ms); the audio "
                                "predictor learns from it shifted by %+d frames (r %.3f against %.3f unshifted)",
                                describe_shift(shift), FRAME_MS, shift, scores[shift], scores[0])
        model.lip_regression.clip_shift.fill_(shift)
        self._use_clip_shift()

    def _kernel_weights(self, phone_weight: float | None = None) -> torch.Tensor:
        """The kernel predictor's input weights: Gaussian in time, and for MFCC rows lower for the higher cepstra
        (``lip_kernel_taper``); a ``phonetic`` row's articulation values weigh ``phone_weight`` (default: the
        weight :meth:`_choose_phone_weight` chose for this clip)."""
        from ..audio.features import MFCC_KINDS
        from ..audio.phonetic import MFCC_DIM
        from ..model.lipkernel import input_weights

        o, kind, dim = self.config.optimization, self.data.audio_kind, self.model.audio_dim
        if kind not in MFCC_KINDS:
            return input_weights(dim)
        taper = input_weights(MFCC_DIM, taper=float(o.lip_kernel_taper)).reshape(16, MFCC_DIM)
        if kind == "mfcc":
            return taper.reshape(-1)
        if phone_weight is None:
            phone_weight = self._choose_phone_weight()
        phones = input_weights(dim - MFCC_DIM).reshape(16, -1) * float(phone_weight)
        return torch.cat([taper, phones], 1).reshape(-1)

    def _choose_phone_weight(self) -> float:
        """The weight of a ``phonetic`` row's articulation values in the predictor's distance, for this clip:
        ``lip_kernel_phone_weight`` when the phones raise the cross-validated r of the mouth opening read out of the
        out-of-fold codes (the same 5 contiguous folds as the calibration's), else 0, which is the ``mfcc``
        predictor exactly. The phones add six values per row to learn from: 20-50 s clips gained (German r 0.50 ->
        0.55, French 0.636 -> 0.641), 6-10 s ones lost (docs/quality.md). Chosen once per run, after the clip's
        audio shift is set (a resumed run, whose shift comes with the model, chooses the same)."""
        if self._phone_weight is not None:
            return self._phone_weight
        configured = float(self.config.optimization.lip_kernel_phone_weight)
        if self.data.audio_kind != "phonetic" or configured == 0.0:
            self._phone_weight = configured
            return configured
        from ..lipsync import opening_readout, pearson

        opening = self._train_openings().numpy()
        scores, folds = {}, {}
        for weight in (0.0, configured):
            folds[weight] = self._lip_kernel_folds(self._kernel_weights(weight))
            _, true, cv = folds[weight]
            if cv is None:  # too few frames to cross-validate: the configured weight
                self._phone_weight = configured
                return configured
            scores[weight] = pearson(opening_readout(true.numpy(), opening)(cv.numpy()), opening)
        better = scores[configured] > scores[0.0]  # NaN (a mouth that never moves) compares False: no phones
        self._phone_weight = configured if better else 0.0
        self._chosen_folds = folds[self._phone_weight]
        self._phone_scores = {"cv_r_with_phones": round(scores[configured], 4),
                              "cv_r_without_phones": round(scores[0.0], 4)}
        log.info("lip code: cross-validated r of the mouth read from the audio %.3f with the recognised phones, "
                 "%.3f without: %s", scores[configured], scores[0.0],
                 f"phones weigh {configured:g}" if better else "the predictor reads the MFCC values only")
        return self._phone_weight

    def _folds(self) -> tuple[Callable[[torch.Tensor | None], Any], torch.Tensor, torch.Tensor | None]:
        """:meth:`_lip_kernel_folds` at the chosen phone weight: those :meth:`_choose_phone_weight` computed to
        choose it (handed over once), else computed now."""
        self._choose_phone_weight()
        folds, self._chosen_folds = self._chosen_folds, None
        return folds if folds is not None else self._lip_kernel_folds()

    def _use_clip_shift(self) -> None:
        """Read the clip's audio shifted by the model's ``clip_shift`` (a fresh run after measuring it, a resumed one
        after loading the model)."""
        self._read_audio_shifted(self.model.clip_shift)

    def _read_audio_shifted(self, shift: int) -> None:
        """Set the dataset's ``audio_shift`` and make the training split (and the predictor's noise copies) again
        with it."""
        if shift != self.data.audio_shift:
            self.data.audio_shift = shift
            self.train_split = self.data.split("train")
            self._bank = self._chosen_folds = None

    def _lip_kernel_folds(self, weights: torch.Tensor | None = None
                          ) -> tuple[Callable[[torch.Tensor | None], Any], torch.Tensor, torch.Tensor | None]:
        """``(fit, tracked, cv)``: ``fit(keep)`` fits a kernel predictor to the training windows and extra samples
        selected by the mask ``keep`` (``None``: all of them); ``tracked`` the training frames' codes ``[n, K]``;
        ``cv`` their out-of-fold predictions ``[n, K]`` from 5 contiguous folds (each fold's noisy copies left out
        with it), ``None`` with fewer than 50 frames. Deterministic: a resumed run recomputes the same values.
        ``weights``: the predictor's input weights (default :meth:`_kernel_weights`)."""
        from ..data import audio_context
        from ..model.lipkernel import KernelLipPredictor

        model, o = self.model, self.config.optimization
        if weights is None:
            weights = self._kernel_weights()
        split, k = self.train_split, model.lip_dim
        n = len(split)
        x = audio_context(split.audio, torch.arange(n))
        y = split.lips[:, :k].float()
        rows = torch.arange(n)
        bank = self._lip_bank()
        if bank is not None:
            x, y, rows = torch.cat([x, bank[0]]), torch.cat([y, bank[1].float()]), torch.cat([rows, bank[2]])
        seed = int(o.seed)

        def fit(keep: torch.Tensor | None) -> KernelLipPredictor:
            if keep is None:
                keep = torch.ones(x.shape[0], dtype=torch.bool)
            # Far from every training window the prediction falls back to the prior: the mean code of the real
            # frames kept (the silence samples' closed mouths would pull it shut for any unfamiliar sound).
            pred = KernelLipPredictor(model.audio_dim, k)
            pred.clip_shift.copy_(model.lip_regression.clip_shift)  # the inputs' shift, kept with the fit
            return pred.fit(x[keep], y[keep], float(o.lip_kernel_ridge), int(o.lip_kernel_centres),
                            torch.Generator().manual_seed(seed), weights, prior=y[:n][keep[:n]].mean(0))

        cv = None
        if n >= 50:
            cv = torch.zeros(n, k)
            for part in torch.arange(n).tensor_split(5):
                cv[part] = fit(~torch.isin(rows, part))(x[part])
        return fit, y[:n], cv

    @torch.no_grad()
    def _predicted_lips(self) -> torch.Tensor | None:
        """The training frames' out-of-fold predicted codes, calibrated and clamped as a render's, ``[n, K]`` on the
        CPU (``lip_code_predicted_share``); None when unused or with too few frames to cross-validate. Computed
        once (from the fit's folds in a fresh run, again from the same deterministic folds after a resume)."""
        model = self.model
        if not (float(self.config.optimization.lip_code_predicted_share) > 0 and model.lip_dim and model.lip_kernel):
            return None
        if self._predicted is None:
            cv = self._folds_cv if self._folds_cv is not None else self._folds()[2]
            self._folds_cv = None
            if cv is None:
                log.info("lip code: too few training frames for out-of-fold codes; the renderer sees tracked codes")
                self._predicted = torch.empty(0)
            else:
                codes = model.calibrate_lips(cv.to(model.lip_center.device))
                # Deterministic fits, but rank 0's bits for every rank (every rank comes here: _iteration calls
                # this before its frames, and a rank without frames too).
                self.comm.broadcast_([codes], what="out-of-fold lip codes")
                self._predicted = codes.cpu()
                self._train_row = {int(i): j for j, i in enumerate(self.train_split.img_ids)}
                log.info("lip code: the renderer sees the out-of-fold predicted code in %.0f %% of the fine-stage "
                         "frames", 100 * float(self.config.optimization.lip_code_predicted_share))
        return self._predicted if self._predicted.numel() else None

    @torch.no_grad()
    def _set_lip_range(self, lips: torch.Tensor) -> None:
        """The calibrated codes' centre (the tracked codes' mean), clamp range (their range + 10 % each side) and the
        closed-mouth code renders close to in silences (``lip_closed``)."""
        model = self.model
        span = lips.max(0).values - lips.min(0).values
        dev = model.lip_center.device
        model.lip_center.copy_(lips.mean(0).to(dev))
        model.lip_low.copy_((lips.min(0).values - 0.1 * span).to(dev))
        model.lip_high.copy_((lips.max(0).values + 0.1 * span).to(dev))
        model.lip_closed.copy_(self._closed_code().to(dev))

    @torch.no_grad()
    def _set_lip_region(self) -> None:
        """Restrict the lip blendshapes to the Gaussians around the mouth (:func:`mouth_region`)."""
        split, n = self.train_split, len(self.train_split)
        picks = torch.linspace(0, n - 1, min(n, MOUTH_REGION_FRAMES)).round().long().unique()
        cams = cameras_from_transforms(split.c2w[picks], self.data.focal, self.data.width, self.data.height)
        rects = torch.tensor([self.data.lips_rect_of(int(split.img_ids[int(k)])) for k in picks])
        inside = mouth_region(self.model.xyz.detach().cpu(), cams, rects)
        self.model.set_lip_region(inside.to(self.model.xyz.device))
        log.info("lip blendshapes: %d of %d Gaussians in the mouth region", int(inside.sum()), inside.numel())

    @torch.no_grad()
    def _calibrate_lips(self) -> None:
        """Set the predicted codes' calibration from the frames the predictor has not seen (the held-out tail of the
        training split): per component, gain = std(tracked) / std(predicted) in [1, 2] (a regression shrinks
        its swing on unseen audio; the gain restores it), and the clamp range of the tracked codes."""
        model = self.model
        if not model.lip_dim or model.lip_kernel:  # the kernel predictor is calibrated when it is fitted
            return
        from ..data import audio_context

        lips = self.train_split.lips[:, : model.lip_dim]
        self._set_lip_range(lips)
        start, n = self._lip_pool("coarse"), len(self.train_split)
        if n - start < 8 or self.state.global_iteration < 100:  # the predictor steps once per iteration
            log.info("lip code: no calibration (too few held-out frames or predictor steps); gain 1")
            return
        was = model.training
        model.eval()
        pred = model.predict_lips(audio_context(self.train_split.audio, torch.arange(start, n)).to(self.device)).cpu()
        model.train(was)
        true = lips[start:n]
        gain = (true.std(0) / pred.std(0).clamp_min(1e-6)).clamp(1.0, 2.0)
        r = [float(torch.corrcoef(torch.stack([pred[:, j], true[:, j]]))[0, 1]) for j in range(model.lip_dim)]
        model.lip_gain.copy_(gain.to(model.lip_gain.device))
        log.info("lip code: held-out correlation per component %s, gain %s", [round(x, 2) for x in r],
                 [round(float(x), 2) for x in gain])

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        p = ckpt["progress"]
        self.state = _Progress(stage=p["stage"], stage_iteration=int(p["stage_iteration"]),
                               consumed=int(p["consumed"]), global_iteration=int(p["global_iteration"]))
        if self.state.stage not in STAGES:
            raise ValueError(f"{path}: unknown stage {self.state.stage!r}")
        GaussianTalkerModel.adapt_config(self.config, ckpt["model"])
        model = GaussianTalkerModel(self.config, self.data.audio_dim, 1)
        model.resize_for_state(ckpt["model"])
        model.load_state_dict(ckpt["model"], strict=True)
        self.model = model.to(self.device).train()
        self.optimizer = self._make_optimizer(self.state.stage)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lip_optimizer = self._make_lip_optimizer()
        if self.lip_optimizer is not None and ckpt.get("lip_optimizer"):
            self.lip_optimizer.load_state_dict(ckpt["lip_optimizer"])
        self.strategy = self._make_strategy(self.state.stage)
        self.strategy.load_state_dict(ckpt["strategy"], self.device)
        set_rng_state(self._rank_rng(ckpt), self.device)
        log.info("resuming %s from %s (%s stage, iteration %d)", self.model_dir, path.name, self.state.stage,
                 self.state.stage_iteration)

    def _rank_rng(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG state from a checkpoint: its own when the world size is the same, else rank 0's (the
        ranks draw identical streams by design, so any rank's state continues the run)."""
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(ranks) == self.comm.world:
            return ranks[self.comm.rank]
        if self.comm.world > 1 or len(ranks) > 1:
            log.info("resuming with %d rank(s) from a checkpoint of %d: every rank takes rank 0's RNG state",
                     self.comm.world, len(ranks))
        return ranks[0]

    def prepare(self) -> None:
        """Start fresh, or resume from the newest checkpoint of the model folder."""
        found = list_checkpoints(self.model_dir)
        if found:
            self._resume(self.model_dir / "checkpoints" / f"chkpnt_{found[-1]}.pth")
        else:
            self._fresh()
        self._use_clip_shift()  # the clip's audio as the model reads it (resumed: from its checkpoint)
        self._broadcast_model()
        if not self.comm.is_main:
            return
        summary = self._lip_summary
        if summary is None and found and (self.model_dir / "model.json").is_file():
            summary = ModelInfo.read(self.model_dir / "model.json").lip_predictor  # chosen by the fresh run
        info = ModelInfo(audio_kind=self.data.audio_kind, audio_dim=int(self.data.audio_dim),
                         dataset_path=str(Path(self.data.path).resolve()), width=int(self.data.width),
                         height=int(self.data.height), focal=float(self.data.focal), lip_predictor=summary)
        save_model_info(self.model_dir, self.config, info)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``chkpnt_<global iteration>.pth``. Called by every rank of a data-parallel run (it gathers each
        rank's RNG state); rank 0 alone writes, and no rank goes on before the file is complete."""
        s = self.state
        self.strategy.synchronise()
        rngs = self.comm.gather_objects(rng_state(self.device), what="checkpoint (RNG states)")
        path = checkpoint_path(self.model_dir, s.global_iteration)
        if self.comm.is_main:
            self._write_checkpoint(rngs)
        self.comm.barrier("checkpoint barrier")
        return path

    def _write_checkpoint(self, rngs: list[dict[str, Any]]) -> Path:
        s = self.state
        payload = {
            "progress": {"stage": s.stage, "stage_iteration": s.stage_iteration, "consumed": s.consumed,
                         "global_iteration": s.global_iteration},
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "lip_optimizer": _to_cpu(self.lip_optimizer.state_dict()) if self.lip_optimizer is not None else None,
            "scheduler": {"stage": s.stage, "step": s.stage_iteration, "lr": self.lrs.at(s.stage_iteration)},
            "strategy": self.strategy.state_dict(),
            "rng": rngs[0],
            "rng_ranks": rngs,  # every rank's (identical by design; a resume with the same world size uses its own)
            "world_size": self.comm.world,
            "config": self.config.to_dict(),
        }
        return save_checkpoint(self.model_dir, s.global_iteration, payload)

    # ------------------------------------------------------------------ iterations

    def _loader(self, stage: str, batch_size: int):
        from ..data import collate

        order = self._order = FrameOrder(len(self.train_split), self.config.optimization.seed, stage,
                                         self._repeats(stage))
        lo, hi = batch_part(batch_size, self.comm.rank, self.comm.world)
        self._part = (lo, hi, batch_size)
        if lo == hi:  # more ranks than frames in a batch (the coarse stage's 1): this rank renders nothing
            return no_frames()
        workers = self.config.optimization.num_workers
        if workers < 0:
            workers = 4 if self.device.type == "cuda" else 0
        loader = torch.utils.data.DataLoader(
            self.train_split, batch_sampler=BatchSampler(order, batch_size, self.state.consumed, (lo, hi)),
            collate_fn=collate, num_workers=workers, pin_memory=self.device.type == "cuda",
            # A private generator: creating a loader must not draw from the global RNG (resume = same stream).
            generator=torch.Generator().manual_seed(int(self.config.optimization.seed)))
        return iter(loader)

    def _repeats(self, stage: str) -> list[int] | None:
        """Fine stage with ``open_mouth_repeat`` > 1: the training frames whose mouth opening is in the top
        quarter appear that many times per epoch (wide-open mouths are the rarest shapes, and the ones a
        renderer most often smooths away); None = every frame once."""
        k = int(self.config.optimization.open_mouth_repeat)
        if stage != "fine" or k <= 1:
            return None
        opening = self._train_openings()
        ok = torch.isfinite(opening)
        if int(ok.sum()) < 4:
            return None
        wide = opening >= torch.quantile(opening[ok], 0.75)
        return [k if bool(w) else 1 for w in wide]

    def _batch_size(self, stage: str) -> int:
        if stage == "coarse":
            return 1
        bs, n = int(self.config.optimization.batch_size), len(self.train_split)
        if bs > n:
            log.info("batch_size %d > %d training frames: using %d", bs, n, n)
        return min(bs, n)

    def _iteration(self, stage: str, it: int, batch) -> dict[str, Any]:
        """One step on this rank's rows of the global batch (all of it with one process; None: no rows)."""
        model, opt = self.model, self.optimizer
        self.lrs.apply(opt, it)
        if self._raise_sh_degree(stage, it) and int(model.active_sh_degree) < model.max_sh_degree:
            model.active_sh_degree += 1
        lo, hi, total = self._part
        noise = None
        if stage == "fine" and model.lip_dim:
            # Drawn for the whole global batch on every rank, then sliced: the RNG streams (and the noise of each
            # frame) are those of a single-process run whatever the number of ranks.
            noise = torch.randn((total, model.lip_dim), device=self.device)[lo:hi]
            self._predicted_lips()  # on every rank (a collective the first time)
        out = terms = None
        if batch is not None:
            batch = batch.to(self.device, non_blocking=True)
            out, terms = self._forward(stage, it, batch, noise)
            loss = terms.total
        else:  # a rank without frames still carries its share of the regularisers
            loss = self.objective.regularisers(model) / self.comm.world
        loss.backward()
        if self.comm.single:
            self.strategy.observe(out.radii, out.means2d.grad if out.means2d is not None else None)
            loss_value, psnr_value = loss.detach(), psnr(out.image.detach().clamp(0, 1), batch.target)
        else:
            loss_value, psnr_value = reduce_step(self.comm, opt, self.strategy, model.num_points, self._part, out,
                                                 batch.target if batch is not None else None, loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.strategy.step(it, model, opt)
        self._lip_step(stage)
        parts = dict(terms.parts) if terms is not None else {}
        if self._lip_loss is not None:
            parts["lip_code"] = self._lip_loss
        return {"loss": loss_value, "psnr": psnr_value, "out": out, "batch": batch, "parts": parts}

    def _sample_seed(self, salt: int, j: int = 0) -> int:
        """A seed for row ``j`` of the global batch, from its sample number in the stage's stream and ``salt`` (one
        per use): the same on every rank and in a resumed run."""
        return (int(self.config.optimization.seed) * 998_244_353 + salt * 1_000_003 + self.state.consumed + j) % 2 ** 63

    def _frame_generators(self, stage: str, lo: int, hi: int) -> list[torch.Generator]:
        """The dropout generators of the frames ``lo:hi`` of the global batch, seeded by each frame's sample number
        in the stage's stream: a frame gets the same dropout masks whatever rank renders it."""
        salt = 1 if stage == "coarse" else 2
        return [torch.Generator(device=self.device).manual_seed(self._sample_seed(salt, j)) for j in range(lo, hi)]

    def _forward(self, stage: str, it: int, batch, noise: torch.Tensor | None):
        """Render this rank's frames and compute their (share-weighted) loss."""
        model = self.model
        lo, hi, total = self._part
        cond = None
        if stage == "fine":
            lips = None
            if model.lip_dim:  # teacher forcing: the tracked code, with noise the predicted codes will bring
                lips = batch.lips[:, : model.lip_dim]
                lips = lips + float(self.config.optimization.lip_code_noise) * noise
                lips = self._with_predicted_lips(batch, lips)
            cond = Conditions(batch.audio, batch.eye, batch.cam, lips).to(self.device)
        with frame_dropout(self._frame_generators(stage, lo, hi) if stage == "fine" else None):
            g = model.deform(stage, cond)
        finite = torch.stack([torch.isfinite(t).all() for t in (g.means, g.scales, g.rotations, g.opacities, g.shs)])
        if not bool(finite.all()):
            raise TrainingError(f"the Gaussians are not finite at {stage} iteration {it} (global iteration "
                                f"{self.state.global_iteration + 1})")
        out = render_batch(g, batch.cameras, batch.bg_torso)
        terms = self.objective(out, batch.target, batch.head_mask, batch.lips_rect.cpu(), model, self._share(batch))
        if not bool(torch.isfinite(terms.total)):
            raise TrainingError(f"the loss is not finite at {stage} iteration {it} (global iteration "
                                f"{self.state.global_iteration + 1}); parts: "
                                f"{ {k: float(v) for k, v in terms.parts.items()} }")
        return out, terms

    def _with_predicted_lips(self, batch, lips: torch.Tensor) -> torch.Tensor:
        """``lips`` with a ``lip_code_predicted_share`` of the frames' codes replaced by their out-of-fold predicted
        codes (without the noise: they carry the predictor's own error). The picks are drawn for the whole global
        batch from its first sample number in the stage, on every rank alike, then sliced: the same frames are
        picked whatever the number of ranks, and a resumed run picks as the uninterrupted one would have."""
        predicted = self._predicted_lips()
        if predicted is None:
            return lips
        lo, hi, total = self._part
        o = self.config.optimization
        g = torch.Generator().manual_seed(self._sample_seed(3))
        pick = (torch.rand(total, generator=g) < float(o.lip_code_predicted_share))[lo:hi]
        if not bool(pick.any()):
            return lips
        rows = torch.tensor([self._train_row[int(i)] for i in batch.img_id.tolist()], dtype=torch.long)
        return torch.where(pick.to(lips.device)[:, None], predicted[rows].to(lips), lips)

    def _share(self, batch) -> Share | None:
        """This rank's weights in the loss of the global batch (None with one process)."""
        if self.comm.single:
            return None
        rects = None
        if self.config.optimization.lip_fine_tuning:
            ids = self._order.batch(self.state.consumed, self._part[2])
            rects = [self.data.lips_rect_of(self.train_split.img_ids[k]) for k in ids]
        return batch_share(self.comm, self._part, batch.lips_rect if rects else None, rects)

    def _raise_sh_degree(self, stage: str, it: int) -> bool:
        """One more SH band every ``sh_degree_interval`` iterations of a stage (the original's 1000), but not when
        fewer than half an interval of the stage is left to train it: a band raised at a stage's last iteration
        is saved untrained and tints every render (measured: cpu_small's 1000 + 1000 run ended at degree 2 with
        the degree-2 band untrained, 29.4 dB on training frames against 34.9 dB at degree 1)."""
        every = int(self.config.optimization.sh_degree_interval)
        return every > 0 and it % every == 0 and self.totals[stage] - it >= every / 2

    def run(self, stop_at: int | None = None) -> Model:
        """Train to the end (or until global iteration ``stop_at``, then checkpoint and return)."""
        if self.model is None:
            self.prepare()
        every = int(self.config.optimization.checkpoint_every)
        total = sum(self.totals.values())
        main = self.comm.is_main
        monitor = Monitor(self.model_dir, self.config, total, self.state.global_iteration, self.progress,
                          self.callback) if main else SilentMonitor()
        check_every = int(self.config.optimization.hash_check_every)
        try:
            for stage in STAGES:
                if STAGES.index(stage) < STAGES.index(self.state.stage):
                    continue
                if stage != self.state.stage:
                    self.state = _Progress(stage=stage, global_iteration=self.state.global_iteration)
                    self._begin_stage(stage)
                elif stage == "fine" and not bool(self.model.fine_ready):
                    self._begin_stage(stage)
                bs = self._batch_size(stage)
                batches = None
                while self.state.stage_iteration < self.totals[stage]:
                    if stop_at is not None and self.state.global_iteration >= stop_at:
                        self.save_checkpoint()
                        return self._handle(None)
                    if batches is None:
                        batches = self._loader(stage, bs)
                    it = self.state.stage_iteration + 1
                    result = self._iteration(stage, it, next(batches))
                    self.state.stage_iteration = it
                    self.state.consumed += bs
                    self.state.global_iteration += 1
                    g = self.state.global_iteration
                    last = g == total
                    saved = bool(every and g % every == 0) or last
                    if not self.comm.single and check_every and (g % check_every == 0 or last):
                        self.comm.check_identical(self.model.state_dict(), f"global iteration {g}")
                    if saved:
                        if stage == "fine" and main:
                            save_iteration(self.model_dir, it, self.model)
                        self.save_checkpoint()
                    if stage == "fine" and main and self._preview_due(it):
                        result["mouth"] = self.held_out_mouth()
                    try:
                        monitor.update(g, stage, self.model.num_points, result)
                    except BaseException:  # the caller's callback stopped us: between iterations, so resumable
                        if not saved and self.comm.single:
                            self.save_checkpoint()
                        elif not saved:  # the other ranks are in the next step: no collective checkpoint now
                            log.warning("stopped by the callback on rank 0; the other ranks stop too, and the run "
                                        "resumes from the last periodic checkpoint")
                        raise
            self._finish_coarse_only()
        finally:
            monitor.close()
        if not main:  # rank 0 alone evaluates and writes metrics.json
            return self._handle(None)
        if self.callback is not None:
            g = self.state.global_iteration
            self.callback(Progress(stage="evaluate", iteration=g, total=total, points=self.model.num_points,
                                   message="evaluating on the held-out frames"))
        metrics = self.evaluate()
        return self._handle(metrics)

    def _finish_coarse_only(self) -> None:
        """A run whose fine stage has 0 iterations still leaves a renderable model (iteration_0)."""
        if self.totals["fine"] == 0:
            if not bool(self.model.fine_ready):
                self.model.start_fine()
            if self.comm.is_main:
                save_iteration(self.model_dir, 0, self.model)

    def _handle(self, metrics: dict[str, float] | None) -> Model:
        from ..model.io import list_iterations

        saved = list_iterations(self.model_dir)
        return Model(path=self.model_dir, name=self.model_dir.name, iteration=saved[-1] if saved else 0,
                     config=self.config, audio_kind=self.data.audio_kind, metrics=metrics or {})

    # ------------------------------------------------------------------ evaluation

    def _preview_due(self, it: int) -> bool:
        every = int(self.config.optimization.preview_every)
        return bool(every > 0 and (it % every == 0 or it == self.totals["fine"]))

    def _frame_voice(self) -> np.ndarray | None:
        """The clip's voice activity per ``img_id`` (computed once; see ``TalkingHeadData.frame_voice``)."""
        if self._voice is None:
            self._voice = (self.data.frame_voice(),)
        return self._voice[0]

    @torch.no_grad()
    def held_out_mouth(self, max_frames: int = 100) -> dict[str, float]:
        """Lip sync on the held-out frames so far: the first ``max_frames`` rendered with their own audio and
        poses at the training size, landmarks detected on them, and their mouth opening compared with the real
        frames' tracked one (Pearson r, amplitude ratio). ``{}`` when there is no held-out split or no
        landmark backend."""
        from ..data import collate
        from ..lipsync import lip_sync_scores, mouth_opening
        from ..preprocess.landmark_backends import BackendUnavailableError, detect
        from ..render.video import to_uint8

        split = self.data.split("val")
        n = min(len(split), int(max_frames))
        if n < 3:
            return {}
        model = self.model
        voice = self._frame_voice() if model.lip_dim and model.has_silence_gate else None
        model.eval()
        frames = []
        try:
            bs = max(1, int(self.config.optimization.batch_size))
            for a in range(0, n, bs):
                batch = collate([split[k] for k in range(a, min(a + bs, n))]).to(self.device)
                v = None if voice is None else torch.from_numpy(voice[batch.img_id.cpu().numpy()].astype(np.float32))
                g = model.deform("fine", Conditions(batch.audio, batch.eye, batch.cam, voice=v).to(self.device))
                frames += list(to_uint8(render_batch(g, batch.cameras, batch.bg_torso).image.clamp(0, 1)))
        finally:
            model.train()
        backend = str((self.data.meta.get("backends") or {}).get("landmarks") or "mediapipe")
        try:
            found = detect(iter(frames), backend=backend if backend in ("mediapipe", "dlib", "face-alignment")
                           else "mediapipe")
        except BackendUnavailableError as exc:
            log.debug("no held-out mouth preview: %s", exc)
            return {}
        pts = found.points68.astype(np.float64)
        pts[~found.found] = np.nan
        real = self.data.mouth_opening[torch.tensor(self.data.val_ids[:n])].numpy()
        sc = lip_sync_scores(mouth_opening(pts), real)
        return {"val_mouth_r": sc.pearson, "val_mouth_amplitude": sc.amplitude_ratio}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """PSNR / SSIM (and LPIPS when its weights are present) on the held-out split -> ``metrics.json``."""
        from ..data import collate
        from ..losses import ssim

        split = self.data.split("val")
        if len(split) == 0:
            log.warning("%s: the val split is empty; no metrics", self.data.path)
            return {}
        lpips = _lpips(self.assets, self.device)
        model = self.model
        model.eval()
        bs = max(1, int(self.config.optimization.batch_size))
        sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
        try:
            for start in range(0, len(split), bs):
                batch = collate([split[k] for k in range(start, min(start + bs, len(split)))]).to(self.device)
                g = model.deform("fine", Conditions(batch.audio, batch.eye, batch.cam).to(self.device))
                img = render_batch(g, batch.cameras, batch.bg_torso).image.clamp(0, 1)
                mse = (img - batch.target).square().flatten(1).mean(1).clamp_min(1e-10)
                sums["psnr"] += float((-10.0 * torch.log10(mse)).sum())
                sums["ssim"] += float(ssim(img, batch.target, reduction="none").sum())
                if lpips is not None:
                    sums["lpips"] += float(lpips(img, batch.target).sum())
        finally:
            model.train()
        n = len(split)
        metrics = {"psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n, "frames": float(n)}
        if lpips is not None:
            metrics["lpips"] = sums["lpips"] / n
        record = {"split": "val", "iteration": self.totals["fine"], "global_iteration": self.state.global_iteration,
                  "metrics": metrics, "backends": {**self.objective.backends,
                                                   "lpips": "on" if lpips is not None else "off"},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = _json(record)
        atomic_write(self.model_dir / "metrics.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return metrics


def _lpips(assets, device):
    """LPIPS (per image ``[B]``) when its weights are in the asset folder, else None (logged once)."""
    from ..metrics import make_lpips

    return make_lpips("auto", assets, device)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class _IsolatedRng:
    """Restore the caller's python / numpy / torch RNG states after training (training seeds its own)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> None:
        self.saved = rng_state(self.device)

    def __exit__(self, *exc: object) -> None:
        set_rng_state(self.saved, self.device)


def train(dataset_or_path: Any, config: Any = None, iterations: int | None = None, device: Any = "auto",
          workspace: PathLike | None = None, name: str | None = None, progress: bool = True,
          assets: PathLike | None = None, callback: ProgressCallback | None = None, restart: bool = False) -> Model:
    """Train a GaussianTalker model on a preprocessed dataset; resume when the model folder has checkpoints.

    Args:
        dataset_or_path: a dataset folder (ours or the original's layout) or an object with ``.path``.
        config: a ``TrainConfig``, a preset name or a config file; None = the saved config when resuming,
            else the ``64_dim_1_transformer`` preset.
        iterations: fine-stage iterations (the original's ``--iterations``; the coarse stage keeps
            ``coarse_iterations``); None = the config's.
        device: ``auto``, ``CPU``, ``GPU<n>`` or ``cuda:<n>``; or a list (``["GPU0", "GPU1"]``, ``"GPU0,GPU1"``,
            ``"CPU,CPU"``): one rank per entry, started here through torch's elastic launcher, training one model
            data-parallel (``docs/distributed.md``). Under ``torchrun`` this process is one rank: ``auto`` = GPU
            ``LOCAL_RANK`` (the CPU without CUDA), a list = its entry ``LOCAL_RANK``.
        workspace: workspace folder; None = the one containing the dataset (``<ws>/data/<name>``), else
            ``./GaussianTalker``. The model goes to ``<workspace>/output/<name>/``.
        name: model name; None = the dataset's folder name.
        progress: show a tqdm bar.
        assets: folder of optional pretrained files (VGG16 for the perceptual loss, LPIPS).
        callback: called with a :class:`~gaussiantalker.progress.Progress` every 10 iterations and before the
            final evaluation; an exception it raises stops training (resume with a new call).
        restart: discard the model folder's checkpoints and snapshots and start afresh. Without it, resuming
            checks that the checkpoints were trained on this dataset (``dataset.json``, see
            :mod:`gaussiantalker.train.fingerprint`).
    Returns:
        :class:`Model` with the validation ``metrics`` (PSNR, SSIM[, LPIPS]).
    Raises:
        FileNotFoundError: missing dataset or config. ValueError: bad name, device or config.
        TrainingError: a non-finite loss (named with its iteration).
        DatasetMismatchError: (a ValueError) the model folder's checkpoints come from another dataset.
        DistributedError: (data-parallel runs) a rank died or stopped answering, or the ranks diverged.
    """
    from ..distributed import init, launch, launched, parse_devices, this_rank_device

    devices = parse_devices(device)
    if devices is not None and not launched():  # a device list: start one rank per device, then join them
        if callback is not None:
            raise ValueError("a progress callback cannot follow a multi-process run (it would run in the rank "
                             "processes); follow <model>/train_log.jsonl instead")
        if config is not None and not isinstance(config, TrainConfig):
            config = load_config(config)  # a bad config fails here, once, not in every rank
        results = launch(train, devices, str(_dataset_path(dataset_or_path)), config=config, iterations=iterations,
                         workspace=None if workspace is None else str(workspace), name=name, progress=progress,
                         assets=None if assets is None else str(assets), restart=restart)
        return results[0]
    dev = resolve_device(this_rank_device(device))
    comm = init(dev)
    data_path = _dataset_path(dataset_or_path)
    with _IsolatedRng(dev):
        return _train_on(data_path, comm, dev, config=config, iterations=iterations, workspace=workspace, name=name,
                         progress=progress, assets=assets, callback=callback, restart=restart)


def _train_on(data_path: Path, comm: Comm, dev: torch.device, config: Any, iterations: int | None,
              workspace: PathLike | None, name: str | None, progress: bool, assets: PathLike | None,
              callback: ProgressCallback | None, restart: bool) -> Model:
    """:func:`train` in this process, one rank of ``comm`` (rank 0 alone edits the model folder)."""
    from ..data import TalkingHeadData
    from .fingerprint import check_dataset, discard_training, record_dataset

    ws = _workspace_for(data_path, workspace)
    model_name = validate_name(name) if name is not None else validate_name(data_path.name)
    model_dir = ws.model_dir(model_name)
    if comm.is_main:
        if restart and model_dir.is_dir():
            removed = discard_training(model_dir)
            if removed:
                log.warning("restart: discarded %s of %s", ", ".join(removed), model_dir)
    comm.barrier("start barrier")  # every rank sees the folder as rank 0 left it
    resuming = bool(list_checkpoints(model_dir))
    if resuming:
        check_dataset(model_dir, data_path)  # a different video under the same name must not resume
    cfg = _resolve_config(config, model_dir, resuming)
    if iterations is not None:
        if int(iterations) < 0:
            raise ValueError(f"iterations must not be negative, got {iterations}")
        cfg = cfg.replace(iterations=int(iterations))
    m = cfg.model
    data = TalkingHeadData.open(data_path, resolution=None if m.resolution == -1 else m.resolution,
                                cache_mb=m.cache_mb)
    if comm.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            record_dataset(model_dir, data_path)
    trainer = Trainer(data, cfg, model_dir, dev, progress=progress and comm.is_main, assets=assets,
                      callback=callback if comm.is_main else None, comm=comm)
    return trainer.run()


__all__ = ["Model", "Trainer", "TrainingError", "train"]
