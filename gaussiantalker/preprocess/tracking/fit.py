"""Fitting a morphable model to a landmark sequence, in the stages of reference §2.8.

1. Focal search: on every ``grid_stride``-th frame (at least ``min_grid_frames``), all focal
   candidates at once (a batch of problems): weak-perspective initialisation, pose-only, then
   pose + identity (+ expression for the BFM). The candidate with the lowest landmark error wins; a
   parabola through it and its neighbours (in log focal) refines it. The offline model searches on
   its rigid landmarks only (it has no expression space yet).
2. All frames: pose-only, then pose + identity + expression with the focal length free as well
   (self-calibrating bundle adjustment; the original keeps the grid value). The offline model first
   fits its rigid landmarks (pose, shape, focal), starts its expression basis from the residuals
   (:mod:`.expression`), adjusts poses, coefficients, shape and basis jointly (:mod:`.joint`) and
   finally frees the focal length again with every landmark (``final_focal``).
3. Offline model only: the fitted shape is moved rigidly onto the generic layout (rigid landmarks),
   which fixes the gauge of the bundle adjustment (the canonical frame is frontal and upright).
4. Frame-wise refinement of pose and expression with the temporal Laplacian on posed rigid points.

Weights follow the original's, rescaled from its means to sums: ``reg_exp`` is its 0.4 relative to the
mean squared landmark error, ``smooth`` its 1e5 relative to 1.5 x the landmark term, spread over the
model's rigid points (so fewer rigid points each weigh more). The identity prior is the exception: the
original's (``reg_id`` = 0.5 of the mean error, i.e. growing with the clip length) outweighs the data
and biases the focal length and depth by several percent on synthetic ground truth, so a Bayesian
weight (``reg_shape``, pixels² per σ², 1 pixel of landmark noise) is the default for both models
(``original_id_prior=True`` restores the original's).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ...camera import euler_from_rotation
from ...devices import resolve_device
from .expression import init_basis_pca
from .joint import joint_stage
from .model import MorphableModel
from .smooth import smooth_stage
from .solver import FitState, Free, Problem, lm_stage, make_problem, residuals, select_vertices, with_exp_basis

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass
class TrackerConfig:
    """Settings of :func:`fit_landmarks` (defaults tuned for 25 fps talking-head clips)."""

    focal_grid: Tuple[float, ...] = tuple(float(f) for f in range(600, 1401, 100))
    """Focal candidates in pixels for a 512-pixel image (scaled by max(H, W) / 512)."""
    grid_stride: int = 40
    """Every n-th frame is used by the focal search (as the original)."""
    min_grid_frames: int = 12
    """Fewer frames than this in the search: the stride shrinks."""
    iters_pose: int = 12
    """Levenberg-Marquardt iterations of the pose-only stages."""
    iters_joint: int = 25
    """Iterations of the pose + shape (+ focal) stages."""
    iters_basis: int = 30
    """Offline model: iterations of the joint adjustment with the learned expression basis."""
    iters_smooth: int = 6
    """Iterations of the temporal refinement."""
    reg_id: float = 0.5
    """Identity prior relative to the mean squared landmark error (original: 0.5)."""
    reg_exp: float = 0.4
    """Expression prior relative to the mean squared landmark error (original: 0.4)."""
    reg_shape: float = 1.0
    """Offline model: prior on the landmark shape around the generic layout, per σ-unit coordinate, in
    pixels² (a Bayesian weight, not scaled with the clip length: a per-coordinate prior is far less
    informative than the BFM's statistical basis, and scaling it with F biases focal and depth)."""
    original_id_prior: bool = False
    """BFM: use the original's identity prior (``reg_id`` relative to the mean landmark error, i.e.
    growing with the clip length) instead of the Bayesian ``reg_shape``; it biases depth and focal."""
    reg_basis: float = 1.0
    """Offline model: prior on the learned expression basis, per σ-unit coefficient, in pixels²."""
    jaw_weight: float = 1.0
    """Weight of the jaw-line landmarks 0-16. MediaPipe's are fixed mesh vertices (1.0); detectors that
    follow the occluding contour (dlib, FAN, the BFM's dynamic contour) slide them along the cheek
    when the head turns, which the offline model cannot explain rigidly: give them ~0.1."""
    rigid_weight_others: float = 0.0
    """Offline model: weight of the moving landmarks while the fit is still rigid (focal search and
    rigid bundle adjustment, which set the focal length before the expression space exists)."""
    smooth: float = 1e5
    """Temporal Laplacian weight on rigid points, relative to 1.5 x mean landmark error (original)."""
    huber_px: float = 3.0
    """Huber threshold of the landmark residual, pixels at 512 (scaled with the image)."""
    final_focal: bool = True
    """Offline model: free the focal again in the last pass, with all landmarks and the learned basis."""
    refine_focal: bool = True
    """Optimise the focal length in the all-frame bundle adjustment (after the grid)."""
    dtype: torch.dtype = torch.float64
    """Compute precision."""
    cpu_threads: Optional[int] = None
    """Torch CPU threads during the fit (None: torch's setting, restored afterwards otherwise). The fit
    is many small tensor operations: 2 threads are ~1.6x faster than 1 on an idle 2-core machine but
    ~3.5x slower when another process keeps one core busy (measured), so 1 is more predictable on a
    shared machine."""


@dataclass
class TrackingResult:
    """Poses, focal and shape fitted to a landmark sequence (tracker units, reference §2.8)."""

    model_name: str
    id: Tensor  # [Ni] identity coefficients (σ units)
    exp: Tensor  # [F, Ne] expression coefficients (σ units of ``model``'s basis)
    euler: Tensor  # [F, 3] radians, Rot = Rx(θ) Ry(φ) Rz(ψ)
    rotation: Tensor  # [F, 3, 3]
    trans: Tensor  # [F, 3] tracker units
    focal: float  # pixels
    image_size: Tuple[int, int]  # (H, W)
    cx: float
    cy: float
    landmarks: Tensor  # [F, 68, 2] observed
    landmarks_fit: Tensor  # [F, 68, 2] model landmarks projected with the fitted pose
    shape68: Tensor  # [68, 3] canonical landmark positions of the neutral face (identity only)
    model: MorphableModel  # the model fitted (offline: with its learned expression basis), CPU
    focal_search: Dict[float, float] = field(default_factory=dict)  # candidate -> mean squared error
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.trans.shape[0])

    def reprojection_error(self) -> Tensor:
        """``[F, 68]`` pixel distance between fitted and observed landmarks."""
        return (self.landmarks_fit - self.landmarks).norm(dim=-1)

    def rotation_jitter_deg(self) -> Tensor:
        """``[F-1]`` angle (degrees) of the rotation between consecutive frames."""
        return rotation_angle_deg(self.rotation[1:], self.rotation[:-1])


def rotation_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """``[...]`` angle in degrees between rotation matrices ``[..., 3, 3]``.

    From the chord ``‖a - b‖_F = 2√2·sin(θ/2)``: exact for small angles even in float32, where
    ``acos((trace - 1) / 2)`` is quantised to ~0.02°."""
    chord = (a - b).flatten(-2).norm(dim=-1) / (2 * 2 ** 0.5)
    return torch.rad2deg(2 * torch.asin(chord.clamp(max=1.0)))


def _weak_perspective_init(canon: Tensor, obs: Tensor, weights: Tensor, focal: Tensor, cx: float,
                           cy: float) -> Tuple[Tensor, Tensor]:
    """Closed-form scaled-orthographic pose per frame (affine camera, nearest rotation).

    Args:
        canon: ``[68, 3]`` canonical landmarks; obs: ``[F, 68, 2]``; weights: ``[68]``;
        focal: ``[B]`` candidates (they set the depth).
    Returns:
        rotations ``[B, F, 3, 3]`` and translations ``[B, F, 3]``.
    """
    y = torch.stack([obs[..., 0] - cx, -(obs[..., 1] - cy)], -1)  # x right, y up
    w = weights / weights.sum()
    centre = (w[:, None] * canon).sum(0)
    xc = canon - centre
    ym = (w[:, None] * y).sum(1, keepdim=True)  # [F, 1, 2]
    cov_xx = torch.einsum("k,ki,kj->ij", w, xc, xc)
    cov_yx = torch.einsum("k,fki,kj->fij", w, y - ym, xc)
    u, s, vh = torch.linalg.svd(cov_yx @ torch.linalg.inv(cov_xx), full_matrices=False)  # [F, 2, 3]
    r12 = u @ vh  # nearest orthonormal rows
    rot = torch.cat([r12, torch.cross(r12[:, 0], r12[:, 1], dim=-1)[:, None]], 1)
    scale = s.mean(-1)  # pixels per unit at the face's depth
    rc = rot @ centre  # [F, 3]
    txy = ym[:, 0] / scale[:, None] - rc[:, :2]
    tz = -focal[:, None] / scale[None] - rc[None, :, 2]  # depth = focal / scale
    trans = torch.cat([txy[None].expand(focal.shape[0], -1, -1), tz[..., None]], -1)
    return rot[None].expand(focal.shape[0], -1, -1, -1).clone(), trans


def _weights(model: MorphableModel, rigid_first: bool, cfg: TrackerConfig) -> Tensor:
    """Landmark weights: the jaw line at ``cfg.jaw_weight``; while the offline model has no expression
    space yet (``rigid_first``), its moving landmarks at ``cfg.rigid_weight_others``."""
    w = torch.ones(68, dtype=model.mean.dtype, device=model.mean.device)
    w[:17] = cfg.jaw_weight
    if rigid_first and model.learns_expressions:
        moving = model.exp_point_sigma.amax(-1) > 0
        w = torch.where(moving, cfg.rigid_weight_others * w, w)
    return w


def _new_state(model: MorphableModel, obs: Tensor, idc: Tensor, focal: Tensor, weights: Tensor,
               cx: float, cy: float) -> FitState:
    b, f = focal.shape[0], obs.shape[0]
    canon = model.geometry(idc[0], vertex_ids=model.landmark_ids)
    rot, trans = _weak_perspective_init(canon, obs, weights, focal, cx, cy)
    return FitState(rot=rot, trans=trans, exp=obs.new_zeros(b, f, model.num_exp),
                    idc=idc.expand(b, -1).clone(), logf=torch.log(focal))


def _problem(model: MorphableModel, obs: Tensor, cx: float, cy: float, cfg: TrackerConfig, huber: float,
             weights: Tensor) -> Problem:
    """Problem with the original's priors turned from means into sums (module docstring)."""
    if model.learns_expressions or not cfg.original_id_prior:
        lam_id = cfg.reg_shape
    else:
        lam_id = cfg.reg_id * 136.0 * obs.shape[0] / max(model.num_id, 1)
    lam_exp = cfg.reg_exp * 136.0 / max(model.num_exp, 1)
    return make_problem(model, obs, cx, cy, weights, huber, lam_id, lam_exp)


def _focal_search(model: MorphableModel, obs: Tensor, cx: float, cy: float, cfg: TrackerConfig,
                  huber: float, grid: Tensor) -> Tuple[float, Tensor, Dict[float, float]]:
    """Batched grid search; returns the (refined) focal, the identity found with it and the table."""
    stride = max(1, min(cfg.grid_stride, obs.shape[0] // max(cfg.min_grid_frames, 1)))
    sub = obs[::stride]
    weights = _weights(model, True, cfg)
    prob = _problem(model, sub, cx, cy, cfg, huber, weights)
    st = _new_state(model, sub, obs.new_zeros(1, model.num_id), grid, weights, cx, cy)
    st = lm_stage(prob, st, Free(), cfg.iters_pose)
    st = lm_stage(prob, st, Free(exp=not model.learns_expressions, id=True), cfg.iters_joint)
    res, _ = residuals(prob, st, select_vertices(prob, st))
    err = ((res ** 2).sum(-1) * weights).sum(-1).mean(-1) / weights.sum()  # [G] weighted mean sq. error
    err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
    best = int(torch.argmin(err))
    focal = float(grid[best])
    if 0 < best < len(grid) - 1:  # vertex of the parabola through the best and its neighbours
        x, e = torch.log(grid[best - 1: best + 2]), err[best - 1: best + 2]
        denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
        a = (x[2] * (e[1] - e[0]) + x[1] * (e[0] - e[2]) + x[0] * (e[2] - e[1])) / denom
        b = (x[2] ** 2 * (e[0] - e[1]) + x[1] ** 2 * (e[2] - e[0]) + x[0] ** 2 * (e[1] - e[2])) / denom
        if float(a) > 0:
            focal = float(torch.exp((-b / (2 * a)).clamp(x[0], x[2])))
    table = {float(g): float(v) for g, v in zip(grid.tolist(), err.tolist())}
    logger.info("focal search on %d frames: best %.0f px, refined %.1f px", sub.shape[0], float(grid[best]), focal)
    return focal, st.idc[best: best + 1], table


def _align_gauge(model: MorphableModel, st: FitState) -> Tuple[FitState, Tensor]:
    """Move the fitted landmark shape rigidly onto the generic layout (offline model).

    With ``S' = Q·S + c``: ``R' = R·Qᵀ``, ``t' = t - R'·c``; the expression basis turns with the shape
    (done by the caller on the basis). The rigid landmarks define the fit; the scale is the prior's.
    """
    shape = model.geometry(st.idc[0], vertex_ids=model.landmark_ids)  # [68, 3]
    ref = model.mean[model.landmark_ids]
    rid = model.rigid_ids
    a, b = shape[rid], ref[rid]
    ma, mb = a.mean(0), b.mean(0)
    u, _, vh = torch.linalg.svd((b - mb).T @ (a - ma))
    d = torch.sign(torch.det(u @ vh))
    q = u @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ vh
    c = mb - q @ ma
    idc = ((shape @ q.T + c - ref) / model.id_sigma.reshape(68, 3)).reshape(1, -1)
    rot = st.rot @ q.T
    return FitState(rot, st.trans - torch.einsum("bfij,j->bfi", rot, c), st.exp, idc, st.logf), q


def _bundle_adjust(sub: MorphableModel, obs: Tensor, focal: float, idc: Tensor, cx: float, cy: float,
                   cfg: TrackerConfig, huber: float) -> Tuple[Problem, FitState]:
    """Stage 2 (and 3 for the offline model) on all frames."""
    learn = sub.learns_expressions
    f0 = obs.new_tensor([focal])
    if not learn:
        prob = _problem(sub, obs, cx, cy, cfg, huber, _weights(sub, False, cfg))
        st = _new_state(sub, obs, idc, f0, prob.weights, cx, cy)
        st = lm_stage(prob, st, Free(), cfg.iters_pose)
        st = lm_stage(prob, st, Free(exp=True, id=True, focal=cfg.refine_focal), cfg.iters_joint)
        return prob, st
    rigid_w = _weights(sub, True, cfg)
    prob = _problem(sub, obs, cx, cy, cfg, huber, rigid_w)
    st = _new_state(sub, obs, idc, f0, rigid_w, cx, cy)
    st = lm_stage(prob, st, Free(), cfg.iters_pose)
    st = lm_stage(prob, st, Free(id=True, focal=cfg.refine_focal), cfg.iters_joint)
    # The focal length is held while the expression basis is learned (a half-learned basis would bias
    # it through the moving landmarks) and freed once more at the end, with every landmark.
    prob = _problem(sub, obs, cx, cy, cfg, huber, _weights(sub, False, cfg))
    prob, st = init_basis_pca(prob, st, sub.exp_point_sigma, sub.num_exp)
    prob, st = joint_stage(prob, st, sub.exp_point_sigma, cfg.reg_basis, cfg.iters_basis)
    if cfg.refine_focal and cfg.final_focal:
        st = lm_stage(prob, st, Free(exp=True, id=True, focal=True), cfg.iters_pose)
    st, q = _align_gauge(sub, st)
    return with_exp_basis(prob, torch.einsum("ij,kjn->kin", q, prob.exp_basis)), st


def _validate(landmarks, image_size) -> Tuple[Tensor, int, int]:
    lms = landmarks if isinstance(landmarks, Tensor) else torch.as_tensor(np.asarray(landmarks))
    if lms.ndim != 3 or lms.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must have shape [F, 68, 2], got {tuple(lms.shape)}")
    if lms.shape[0] < 3:
        raise ValueError(f"landmarks must hold at least 3 frames, got {lms.shape[0]}")
    bad = (~torch.isfinite(lms)).any(-1).any(-1)
    if bool(bad.any()):
        frames = torch.nonzero(bad)[:10, 0].tolist()
        raise ValueError(f"landmarks contain NaN/inf in {int(bad.sum())} frames (first: {frames}); "
                         "interpolate gaps before tracking")
    if len(image_size) != 2 or int(image_size[0]) <= 0 or int(image_size[1]) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sizes, got {tuple(image_size)}")
    return lms, int(image_size[0]), int(image_size[1])


def fit_landmarks(
    landmarks: Union[Tensor, np.ndarray],
    model: MorphableModel,
    image_size: Sequence[int],
    config: Optional[TrackerConfig] = None,
    device: Union[str, torch.device, None] = "cpu",
) -> TrackingResult:
    """Fit head pose, focal length, identity and expressions to the 68-point landmarks of one clip.

    Args:
        landmarks: ``[F, 68, 2]`` pixels (x = column, y = row, pixel centres at integers), all finite
            (interpolate short gaps first); F >= 3.
        model: :func:`landmark_model` (offline) or a :class:`BFM2009` model.
        image_size: ``(H, W)``; the principal point is ``(W/2, H/2)`` as in the transforms JSON.
        config: :class:`TrackerConfig`.
        device: ``"cpu"``, ``"cuda:0"``, ``"GPU0"``, ``"auto"``...
    Returns:
        :class:`TrackingResult` (tensors on the CPU).
    Raises:
        ValueError: on a wrong shape, non-finite landmarks or a bad image size.
    """
    cfg = config or TrackerConfig()
    lms, h, w = _validate(landmarks, image_size)
    dev = resolve_device(device)
    if dev.type != "cpu" or cfg.cpu_threads is None:
        return _fit(lms, model, h, w, cfg, dev)
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.cpu_threads)
    try:
        return _fit(lms, model, h, w, cfg, dev)
    finally:
        torch.set_num_threads(previous)


def _fit(lms: Tensor, model: MorphableModel, h: int, w: int, cfg: TrackerConfig, dev: torch.device) -> TrackingResult:
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    full = model.to(dev, cfg.dtype)
    sub = full.subset(full.tracked_vertices())
    obs = lms.to(dev, cfg.dtype)
    cx, cy = w / 2.0, h / 2.0
    scale = max(h, w) / 512.0
    huber = cfg.huber_px * scale
    grid = torch.tensor(cfg.focal_grid, dtype=cfg.dtype, device=dev) * scale

    focal, idc, table = _focal_search(sub, obs, cx, cy, cfg, huber, grid)
    timings["focal_search"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    prob, st = _bundle_adjust(sub, obs, focal, idc, cx, cy, cfg, huber)
    timings["bundle_adjustment"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    lam_lap = cfg.smooth / (3.0 * sub.rigid_ids.numel()) * 136.0 / 1.5
    rigid = sub.geometry(st.idc[0], vertex_ids=sub.rigid_ids)
    st = smooth_stage(prob, st, Free(exp=True), rigid, lam_lap, cfg.iters_smooth)
    timings["temporal_refinement"] = time.perf_counter() - t2

    res, _ = residuals(prob, st, select_vertices(prob, st))
    fitted = full
    if sub.learns_expressions:  # the offline model's vertices are its landmarks: keep the learned basis
        fitted = replace(full, exp_basis=prob.exp_basis.permute(2, 0, 1).contiguous())
    timings["total"] = time.perf_counter() - t0
    cpu = lambda t: t.detach().to("cpu", torch.float32)  # noqa: E731
    result = TrackingResult(
        model_name=model.name, id=cpu(st.idc[0]), exp=cpu(st.exp[0]),
        euler=cpu(euler_from_rotation(st.rot[0])), rotation=cpu(st.rot[0]), trans=cpu(st.trans[0]),
        focal=float(st.logf.exp()[0]), image_size=(h, w), cx=cx, cy=cy, landmarks=cpu(obs),
        landmarks_fit=cpu((res + obs)[0]), shape68=cpu(sub.geometry(st.idc[0], vertex_ids=sub.landmark_ids)),
        model=fitted.to("cpu", torch.float32), focal_search=table, timings=timings,
    )
    logger.info("tracked %d frames with %s: focal %.1f px, median reprojection error %.2f px, %.1f s",
                result.num_frames, model.name, result.focal, float(result.reprojection_error().median()),
                timings["total"])
    return result


__all__ = ["TrackerConfig", "TrackingResult", "fit_landmarks", "rotation_angle_deg"]
