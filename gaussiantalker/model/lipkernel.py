"""Audio -> lip code by kernel ridge regression: the lip-code models' default predictor.

A person-specific clip gives a few hundred to a few thousand (audio, mouth) pairs. On so few, a network trained
by SGD on the audio windows overfits and varies from seed to seed; a kernel ridge regression on the frame's own
audio window is fitted in closed form, in seconds, and predicts the tracked lip code of unseen frames better
(5-fold contiguous cross-validation of the mouth opening read out of the code: German 20 s 0.56 vs 0.26 for
the network, French 50 s 0.63; docs/quality.md).

Input: the frame's own window and the next frame's of its 8-window audio context (2 x 16 rows x D features),
standardised per input with the training statistics, then weighted by a Gaussian in time around each window's
centre (:func:`input_weights`; std ``TEMPORAL_SIGMA`` rows of 20 ms in the squared distance): the mouth's shape now
depends most on the sound now, and with every row weighing the same the window's edges, 160 ms away, weighed as
much. Cross-validated (5 contiguous folds, the trainer's noise samples): German 20 s 0.46 -> 0.50, French 50 s
0.55 -> 0.58. MFCC rows' cepstra are weighted too, less the higher they are (``OptimizationParams.lip_kernel_taper``):
German 0.52, French 0.62.
Kernel: Gaussian RBF ``exp(-|a - b|^2 / S)`` on the weighted inputs, ``S = sum(w^2)`` (their mean squared norm;
``S = F``, the input count, unweighted). Fit: the Nystroem form of kernel ridge regression with at most
``max_centres`` centres (all training rows when there are fewer, which is then exact kernel ridge):
``alpha = (K_nm^T K_nm + lambda K_mm)^-1 K_nm^T (Y - prior)``, the prior by default the mean of ``Y``.

A video's sound may be off its picture by a few frames. :func:`measure_audio_shift` measures it before the fit
(which shift of the audio predicts the training frames' mouths best, cross-validated); the trainer then fits on
each frame's audio read that much later or earlier (``TalkingHeadData.audio_shift``, kept in the predictor as
``clip_shift``), so the predictor learns the mouth of the sound it makes, and a new audio drives it in step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..lipsync import opening_readout, pearson

__all__ = ["KernelLipPredictor", "choose_shift", "describe_shift", "measure_audio_shift"]

CENTRE_WINDOW = 4
"""Index of the frame's own window in the 8-window audio context (see gaussiantalker.data.audio_context)."""
WINDOWS = (CENTRE_WINDOW, CENTRE_WINDOW + 1)
"""The windows the predictor reads: the frame's own and the next frame's (lips move ahead of the sound they
make: from the frame's window alone the rendered mouth came out one frame late, best lag +1 on both clips)."""
TEMPORAL_SIGMA = 3.0
"""Std, in 20 ms rows, of the Gaussian that weighs a window's rows in the squared distance (60 ms)."""
SHIFTS = tuple(range(-6, 7))
"""The shifts (frames) :func:`measure_audio_shift` tries: the sound 240 ms early to 240 ms late against the
picture."""
FRAME_MS = 40
"""Milliseconds per frame of a dataset (25 fps): the unit of a shift."""
ALIGN_MARGIN = 0.03
"""A shift other than 0 is taken only when it raises the cross-validated r (mean over the folds) by at least this
much (on the clips measured, neighbouring shifts differ by less than 0.01 near the best one: noise, not an
offset) and by at least ``ALIGN_T`` standard errors of its per-fold gains."""
ALIGN_T = 2.0
"""How consistent over the folds the gain of a shift must be (mean / standard error of the per-fold gains): a 6 s
clip gained 0.05 on average with -2 frames but lost in 2 of its 5 folds (t 0.5), the German clip with its sound
moved 80 ms later gained 0.17 in every fold (t 3.7)."""


def input_weights(audio_dim: int, rows: int = 16, taper: float = 1.0) -> Tensor:
    """Per-input weights of one audio window ``[rows * audio_dim]`` (row-major, as the window is flattened).

    The square of a weight multiplies its input's term in the kernel's squared distance: a row ``t`` rows from
    the window's centre by ``exp(-0.5 (t / TEMPORAL_SIGMA)^2)``; feature ``c`` of a row by ``1 - (1 - taper) c /
    (audio_dim - 1)``, from 1 for the first feature to ``taper`` for the last (1: every feature alike; MFCC rows:
    ``OptimizationParams.lip_kernel_taper``)."""
    t = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
    row = torch.exp(-0.25 * (t / TEMPORAL_SIGMA) ** 2)
    feature = torch.linspace(1.0, float(taper), audio_dim, dtype=torch.float64)
    return (row[:, None] * feature[None, :]).reshape(-1).float()


class KernelLipPredictor(nn.Module):
    """Audio windows ``[B, 8, 16, D]`` -> lip codes ``[B, K]``; untrained (zeros) until :meth:`fit`.

    Its buffers change size with the fit (the number of centres); loading a state dict resizes them."""

    def __init__(self, audio_dim: int, code_dim: int) -> None:
        super().__init__()
        self.audio_dim, self.code_dim = int(audio_dim), int(code_dim)
        f = len(WINDOWS) * 16 * self.audio_dim
        self.register_buffer("windows", torch.tensor(WINDOWS, dtype=torch.long))
        self.register_buffer("feat_mean", torch.zeros(f))
        self.register_buffer("feat_std", torch.ones(f))
        self.register_buffer("feat_weight", torch.ones(f))
        self.register_buffer("centres", torch.zeros(0, f))
        self.register_buffer("alpha", torch.zeros(0, self.code_dim))
        self.register_buffer("code_mean", torch.zeros(self.code_dim))
        #: frames by which the training clip's sound lagged (> 0) or led its picture: the fit read each training
        #: frame's audio this much later (``TalkingHeadData.audio_shift``); a new audio is read as it is
        self.register_buffer("clip_shift", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return self.centres.shape[0] > 0

    def _inputs(self, audio: Tensor) -> Tensor:
        if audio.ndim != 4 or audio.shape[1:] != (8, 16, self.audio_dim):
            raise ValueError(f"audio must have shape [B, 8, 16, {self.audio_dim}], got {tuple(audio.shape)}")
        return audio[:, self.windows.tolist()].reshape(audio.shape[0], -1)

    @staticmethod
    def _kernel(a: Tensor, b: Tensor, scale: Tensor | float) -> Tensor:
        d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2.0 * a @ b.T
        return torch.exp(-d2.clamp_min(0.0) / scale)

    def forward(self, audio: Tensor) -> Tensor:
        x = (self._inputs(audio).to(self.centres.dtype) - self.feat_mean) / self.feat_std * self.feat_weight
        if not self.fitted:
            return self.code_mean.expand(x.shape[0], -1).clone()
        scale = self.feat_weight.square().sum()
        out = []
        for part in x.split(4096):  # bounded memory for long utterances: [4096, M] kernel blocks
            out.append(self._kernel(part, self.centres, scale) @ self.alpha)
        return torch.cat(out) + self.code_mean

    @torch.no_grad()
    def fit(self, audio: Tensor, codes: Tensor, ridge: float = 0.3, max_centres: int = 2000,
            generator: torch.Generator | None = None, weights: Tensor | None = None,
            prior: Tensor | None = None) -> KernelLipPredictor:
        """Fit to audio windows ``[N, 8, 16, D]`` and their codes ``[N, K]`` (replaces any earlier fit).

        Args:
            ridge: the ridge ``lambda`` (the kernel's diagonal is 1).
            max_centres: Nystroem centres, drawn at random (``generator``) when ``N`` is larger.
            weights: one window's input weights ``[16 * D]`` (:func:`input_weights`), the same for each window
                read; ``None``: all 1.
            prior: ``[K]``, the code predicted far from every training window (the regression fits the
                codes minus it); ``None``: the mean of ``codes``.
        """
        if codes.ndim != 2 or codes.shape[1] != self.code_dim or codes.shape[0] != audio.shape[0]:
            raise ValueError(f"codes must have shape [{audio.shape[0]}, {self.code_dim}], got {tuple(codes.shape)}")
        if audio.shape[0] < 2:
            raise ValueError(f"need at least 2 training frames to fit the lip predictor, got {audio.shape[0]}")
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        per_window = 16 * self.audio_dim
        if weights is None:
            weights = torch.ones(per_window)
        if weights.shape != (per_window,) or not bool(torch.isfinite(weights).all()) or not float(weights.abs().max()) > 0:
            raise ValueError(f"weights must be {per_window} finite values, not all zero; got shape {tuple(weights.shape)}")
        device = self.feat_mean.device
        x = self._inputs(audio.detach()).to("cpu", torch.float64)
        y = codes.detach().to("cpu", torch.float64)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        weight = weights.detach().to("cpu", torch.float64).repeat(len(self.windows))
        x = (x - mean) / std * weight
        scale = weight.square().sum()
        n = x.shape[0]
        pick = torch.arange(n) if n <= max_centres else torch.randperm(n, generator=generator)[:max_centres]
        c = x[pick]
        y_mean = y.mean(0) if prior is None else prior.detach().to("cpu", torch.float64).reshape(self.code_dim)
        lhs = ridge * self._kernel(c, c, scale)
        rhs = torch.zeros(c.shape[0], self.code_dim, dtype=torch.float64)
        for rows, targets in zip(x.split(4096), (y - y_mean).split(4096)):  # K_nm^T K_nm in bounded memory
            k = self._kernel(rows, c, scale)
            lhs += k.T @ k
            rhs += k.T @ targets
        lhs += 1e-8 * lhs.diagonal().mean() * torch.eye(lhs.shape[0], dtype=lhs.dtype)
        alpha = torch.linalg.solve(lhs, rhs)
        f32 = dict(device=device, dtype=torch.float32)
        self.feat_mean, self.feat_std, self.feat_weight = mean.to(**f32), std.to(**f32), weight.to(**f32)
        self.centres, self.alpha = c.to(**f32).contiguous(), alpha.to(**f32).contiguous()
        self.code_mean = y_mean.to(**f32)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The fit decides the number of centres, and the saved model the windows it reads (the first kernel
        # models, without a ``windows`` entry, read the frame's own window only; models before the input weights
        # weighed every input 1): take the saved shapes first.
        key = prefix + "windows"
        mean = state_dict.get(prefix + "feat_mean")
        if key not in state_dict and mean is not None:
            count = mean.shape[0] // (16 * self.audio_dim)
            state_dict[key] = torch.arange(CENTRE_WINDOW, CENTRE_WINDOW + count, dtype=torch.long)
        if prefix + "feat_weight" not in state_dict and mean is not None:
            state_dict[prefix + "feat_weight"] = torch.ones_like(mean)
        if prefix + "clip_shift" not in state_dict and mean is not None:  # models before the alignment: none
            state_dict[prefix + "clip_shift"] = torch.zeros((), dtype=torch.long)
        for name in ("windows", "feat_mean", "feat_std", "feat_weight", "centres", "alpha"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros(saved.shape, dtype=saved.dtype, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@torch.no_grad()
def measure_audio_shift(windows: Tensor, codes: Tensor, opening: Tensor, ridge: float = 0.3,
                        weights: Tensor | None = None, folds: int = 5, max_frames: int = 2000
                        ) -> tuple[int, dict[int, float]]:
    """How many frames a clip's sound lags (> 0) or leads its picture, as the audio predicts the mouth best; and
    the score of each shift tried.

    A video's sound can be tens of milliseconds off its picture (capture, editing, re-encoding); a predictor that
    reads the sound of the wrong frames learns a blurred, late or early mouth (on the German clip, a sound 80 ms
    late costs 0.19 of the cross-validated r below). For each shift ``s`` in :data:`SHIFTS`, a kernel predictor
    reads frame ``k``'s mouth from the windows of frames ``k + s`` and ``k + s + 1`` (the windows it reads of an
    unshifted clip: :data:`WINDOWS`); it is fitted on ``folds`` contiguous folds of the frames (at most
    ``max_frames`` of them, evenly spaced), and the mouth opening read out linearly from its out-of-fold codes
    (least squares of ``opening`` on the tracked codes) is correlated with the tracked opening in each fold. A shift
    is taken when it beats 0 clearly and consistently over the folds (:func:`choose_shift`), else 0.

    Args:
        windows: ``[n, 16, D]`` the frames' audio windows, in clip order (the first and last 6 frames, which some
            shifts read past the clip, are not scored).
        codes: ``[n, K]`` their tracked lip codes. opening: ``[n]`` their mouth opening (NaN: frame left out).
    Returns:
        ``(shift, {shift: cross-validated r, the mean over the folds})``; ``(0, {})`` with fewer than 10 usable
        frames per fold.
    """
    n = windows.shape[0]
    reach = max(abs(s) for s in SHIFTS)
    ok = torch.isfinite(opening) & torch.isfinite(codes).all(1)
    ok[:reach] = False  # frames for which some shift would read past the clip
    ok[max(0, n - reach - len(WINDOWS)):] = False
    idx = torch.nonzero(ok).reshape(-1)
    if idx.numel() > max_frames:
        idx = idx[torch.linspace(0, idx.numel() - 1, max_frames).round().long()]
    if idx.numel() < 10 * folds:
        return 0, {}
    y, target = codes[idx].double(), opening[idx].double()
    readout = opening_readout(y.numpy(), target.numpy())
    parts = torch.arange(len(idx)).tensor_split(folds)
    per_fold: dict[int, list[float]] = {}
    for shift in SHIFTS:
        x = windows.new_zeros((len(idx), 8) + tuple(windows.shape[1:]))  # contexts with the windows read filled in
        for j, w in enumerate(WINDOWS):
            x[:, w] = windows[idx + shift + j]
        per_fold[shift] = []
        for part in parts:
            keep = torch.ones(len(idx), dtype=torch.bool)
            keep[part] = False
            pred = KernelLipPredictor(windows.shape[-1], y.shape[1])
            pred.fit(x[keep], y[keep].float(), ridge, max_centres=max_frames, weights=weights)
            per_fold[shift].append(pearson(readout(pred(x[part]).numpy()), target[part].numpy()))
    return choose_shift(per_fold), {k: sum(v) / len(v) for k, v in per_fold.items()}


def describe_shift(shift: int) -> str:
    """``"80 ms behind"`` / ``"120 ms ahead of"``: how a clip's sound stands against its picture, for messages
    (followed by "its picture")."""
    return f"{FRAME_MS * abs(int(shift))} ms {'behind' if shift > 0 else 'ahead of'}"


def choose_shift(per_fold: dict[int, list[float]]) -> int:
    """Of the shifts whose gain in r over shift 0 (``{shift: [r per fold]}``, 0 among them) is at least
    :data:`ALIGN_MARGIN` on average and :data:`ALIGN_T` standard errors of the per-fold gains, the one with the
    highest mean r; 0 when there is none. Folds whose r is NaN (a mouth that does not move there) are left out of
    every comparison."""
    folds = len(per_fold.get(0, []))
    usable = [i for i in range(folds) if all(v[i] == v[i] for v in per_fold.values())]
    if len(usable) < 3:
        return 0
    mean = {k: sum(v[i] for i in usable) / len(usable) for k, v in per_fold.items()}

    def clear_gain(shift: int) -> bool:
        gains = [per_fold[shift][i] - per_fold[0][i] for i in usable]
        gain = sum(gains) / len(gains)
        spread = (sum((g - gain) ** 2 for g in gains) / (len(gains) - 1)) ** 0.5 / len(gains) ** 0.5
        return gain >= ALIGN_MARGIN and gain >= ALIGN_T * spread

    taken = [k for k in mean if k != 0 and clear_gain(k)]
    return max(taken, key=lambda k: (mean[k], -abs(k))) if taken else 0
