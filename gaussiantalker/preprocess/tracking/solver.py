"""Batched Levenberg-Marquardt bundle adjustment of a morphable model to 2D landmarks.

Unknowns (B independent problems — the focal candidates of the grid search — of F frames each):

* per frame: head rotation (updated as ``R <- Exp(ω)·R``), translation, expression coefficients;
* shared by the frames of a problem: identity coefficients and ``log(focal)``.

Cost (pixels², Huber-reweighted landmark terms, reference §2.8 projection π):
``Σ_fk w_k ρ(|π(R_f X_fk + t_f) - y_fk|) + λ_id |id|² + λ_exp Σ_f |exp_f|²`` with
``X_fk = mean_k + B_id,k·id + B_exp,k·exp_f``. A Gauss-Newton step solves the normal equations
exactly through a Schur complement: each frame's pose + expression block is eliminated (batched
solves over frames), leaving a small dense system in the shared unknowns. Everything is batched
tensor algebra over frames — no Python loop over frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

from .model import CONTOUR_LEFT_LANDMARKS, CONTOUR_RIGHT_LANDMARKS, MorphableModel

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

_JAW_CONTOUR = CONTOUR_LEFT_LANDMARKS + CONTOUR_RIGHT_LANDMARKS


@dataclass
class FitState:
    """Current estimate of B problems over F frames."""

    rot: Tensor  # [B, F, 3, 3]
    trans: Tensor  # [B, F, 3]
    exp: Tensor  # [B, F, Ne] σ units
    idc: Tensor  # [B, Ni] σ units
    logf: Tensor  # [B]


@dataclass(frozen=True)
class Free:
    """Which unknowns besides the pose a stage optimises."""

    exp: bool = False
    id: bool = False
    focal: bool = False


@dataclass
class Problem:
    """Observations and fixed settings of a fit."""

    model: MorphableModel  # restricted to the vertices tracking reads
    obs: Tensor  # [F, 68, 2] landmark pixels
    cx: float
    cy: float
    weights: Tensor  # [68] landmark weights
    huber: float  # Huber threshold, pixels
    lam_id: float  # prior weight per identity coefficient
    lam_exp: float  # prior weight per frame and expression coefficient
    id_basis: Tensor  # [V, 3, Ni] σ-scaled, vertex-major for gathering
    exp_basis: Tensor  # [V, 3, Ne] σ-scaled
    id_pointwise: Optional[Tensor] = None  # [68, 3] σ when identity coefficient 3k+c moves landmark k along c


def _pointwise_sigma(model: MorphableModel) -> Optional[Tensor]:
    """σ per landmark coordinate when the identity basis is the per-coordinate one of the offline model
    (its contractions then reduce to reshapes), else None."""
    v = model.num_vertices
    if model.has_contour or model.num_id != 3 * v or v != 68:
        return None
    if not bool(torch.equal(model.landmark_ids, torch.arange(68, device=model.landmark_ids.device))):
        return None
    eye = torch.eye(3 * v, dtype=model.id_basis.dtype, device=model.id_basis.device)
    if not bool(torch.equal(model.id_basis.reshape(3 * v, 3 * v), eye)):
        return None
    return model.id_sigma.reshape(68, 3)


def make_problem(model: MorphableModel, obs: Tensor, cx: float, cy: float, weights: Tensor, huber: float,
                 lam_id: float, lam_exp: float) -> Problem:
    id_b = (model.id_basis * model.id_sigma[:, None, None]).permute(1, 2, 0).contiguous()
    exp_b = (model.exp_basis * model.exp_sigma[:, None, None]).permute(1, 2, 0).contiguous()
    return Problem(model, obs, cx, cy, weights, huber, lam_id, lam_exp, id_b, exp_b, _pointwise_sigma(model))


def so3_exp(omega: Tensor) -> Tensor:
    """Rodrigues: ``[..., 3]`` axis-angle -> ``[..., 3, 3]``."""
    theta = omega.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = omega / theta
    zero = torch.zeros_like(k[..., 0])
    kx = torch.stack([
        torch.stack([zero, -k[..., 2], k[..., 1]], -1),
        torch.stack([k[..., 2], zero, -k[..., 0]], -1),
        torch.stack([-k[..., 1], k[..., 0], zero], -1),
    ], -2)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + s * kx + (1 - c) * (kx @ kx)


@dataclass
class Selection:
    """Landmark vertices in use: static for fixed landmarks, per frame for a dynamic jaw contour."""

    mean: Tensor  # [68, 3] or [B, F, 68, 3]
    id_b: Tensor  # [68, 3, Ni] or [B, F, 68, 3, Ni]
    exp_b: Tensor  # [68, 3, Ne] or [B, F, 68, 3, Ne]

    @property
    def dynamic(self) -> bool:
        return self.mean.ndim == 4


def project(p: Tensor, focal: Tensor, cx: float, cy: float) -> Tensor:
    """Tracker projection of camera-frame points ``[..., 3]``; ``focal`` broadcastable to ``[...]``."""
    return torch.stack([-focal * p[..., 0] / p[..., 2] + cx, focal * p[..., 1] / p[..., 2] + cy], -1)


def _bf(x: Tensor, nd: int) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` with ``nd`` trailing singleton dims."""
    return x.reshape(x.shape + (1,) * nd)


def select_vertices(prob: Problem, st: FitState) -> Selection:
    """Landmark vertices under the current pose (dynamic jaw contour for models that have one)."""
    m = prob.model
    if not m.has_contour:
        ids = m.landmark_ids
        return Selection(m.mean[ids], prob.id_basis[ids], prob.exp_basis[ids])
    cand = m.candidate_ids()  # [68, C]
    jaw = torch.tensor(_JAW_CONTOUR, device=cand.device)
    cj = cand[jaw]  # [16, C]
    xc = m.mean[cj] + torch.einsum("kcdn,bn->bkcd", prob.id_basis[cj], st.idc)[:, None]
    xc = xc + torch.einsum("kcdn,bfn->bfkcd", prob.exp_basis[cj], st.exp)  # [B, F, 16, C, 3]
    pc = torch.einsum("bfij,bfkcj->bfkci", st.rot, xc) + st.trans[:, :, None, None]
    u = project(pc, _bf(st.logf.exp(), 3), prob.cx, prob.cy)[..., 0]  # [B, F, 16, C]
    full_u = u.new_zeros(u.shape[:2] + (68, cand.shape[1]))
    full_u[:, :, jaw] = u
    choice = m.select_contour(full_u)  # [B, F, 68]
    vid = torch.gather(cand.expand(choice.shape[:2] + cand.shape), -1, choice[..., None])[..., 0]
    return Selection(m.mean[vid], prob.id_basis[vid], prob.exp_basis[vid])


def canonical(st: FitState, sel: Selection, id_pointwise: Optional[Tensor] = None) -> Tensor:
    """``[B, F, 68, 3]`` canonical landmark positions."""
    if id_pointwise is not None:
        x = sel.mean + (st.idc.reshape(-1, 68, 3) * id_pointwise)[:, None]
        return x + torch.einsum("kcn,bfn->bfkc", sel.exp_b, st.exp)
    if sel.dynamic:
        x = sel.mean + torch.einsum("bfkcn,bn->bfkc", sel.id_b, st.idc)
        return x + torch.einsum("bfkcn,bfn->bfkc", sel.exp_b, st.exp)
    x = sel.mean + torch.einsum("kcn,bn->bkc", sel.id_b, st.idc)[:, None]
    return x + torch.einsum("kcn,bfn->bfkc", sel.exp_b, st.exp)


def residuals(prob: Problem, st: FitState, sel: Selection) -> Tuple[Tensor, Tensor]:
    """Landmark residuals ``[B, F, 68, 2]`` (model - observed) and camera-frame points."""
    p = torch.einsum("bfij,bfkj->bfki", st.rot, canonical(st, sel, prob.id_pointwise)) + st.trans[:, :, None]
    return project(p, _bf(st.logf.exp(), 2), prob.cx, prob.cy) - prob.obs, p


def robust_weights(prob: Problem, res: Tensor) -> Tensor:
    """``[B, F, 68]`` IRLS weights of the Huber loss times the landmark weights."""
    e = res.norm(dim=-1)
    w = torch.where(e <= prob.huber, torch.ones_like(e), prob.huber / e.clamp_min(1e-12))
    return w * prob.weights


def huber_cost(prob: Problem, res: Tensor) -> Tensor:
    """``[B, F, 68]`` weighted Huber cost ``ρ(e) = e²`` (e <= δ), ``2δe - δ²`` beyond."""
    e = res.norm(dim=-1)
    return torch.where(e <= prob.huber, e * e, 2 * prob.huber * e - prob.huber ** 2) * prob.weights


def frame_costs(prob: Problem, st: FitState, sel: Selection) -> Tuple[Tensor, Tensor]:
    """Per-frame cost ``[B, F]`` (landmarks + expression prior) and shared prior cost ``[B]``."""
    res, _ = residuals(prob, st, sel)
    per_frame = huber_cost(prob, res).sum(-1) + prob.lam_exp * (st.exp ** 2).sum(-1)
    return per_frame, prob.lam_id * (st.idc ** 2).sum(-1)


def point_jacobians(prob: Problem, st: FitState, p: Tensor) -> Tuple[Tensor, Tensor]:
    """d pixel / d camera point ``[B, F, 68, 2, 3]`` and d pixel / d canonical point (same shape)."""
    f = _bf(st.logf.exp(), 2)
    z = p[..., 2]
    zero = torch.zeros_like(z)
    d = torch.stack([
        torch.stack([-f / z, zero, f * p[..., 0] / z ** 2], -1),
        torch.stack([zero, f / z, -f * p[..., 1] / z ** 2], -1),
    ], -2)
    return d, torch.einsum("bfkrc,bfcj->bfkrj", d, st.rot)


@dataclass
class System:
    """Normal equations of one Gauss-Newton step."""

    hpp: Tensor  # [B, F, P, P] per-frame blocks
    gp: Tensor  # [B, F, P]
    hps: Tensor  # [B, F, P, Ns]
    hss: Tensor  # [B, Ns, Ns]
    gs: Tensor  # [B, Ns]


def _contract(v: Tensor, basis: Tensor, dynamic: bool) -> Tensor:
    """``Σ_{f,k,c} v[b,f,k,c]·basis[(b,f,)k,c,n]`` -> ``[B, N]``."""
    if dynamic:
        return torch.einsum("bfkc,bfkcn->bn", v, basis)
    return torch.einsum("bkc,kcn->bn", v.sum(1), basis)


def _shared_terms(prob: Problem, st: FitState, sel: Selection, free: Free, jp: Tensor, g: Tensor,
                  w: Tensor, res: Tensor, jf: Tensor):
    """Blocks of the normal equations that involve identity and focal."""
    hps_parts, rows, gs_parts = [], [], []
    wjp = w[..., None, None] * jp
    if free.id:
        e = torch.einsum("bfkrp,bfkrc->bfkpc", wjp, g)  # J_pᵀ W G
        m = torch.einsum("bfkrc,bfkrd->bfkcd", g, w[..., None, None] * g)  # Gᵀ W G
        pw = prob.id_pointwise
        if pw is not None:  # block-diagonal identity: contractions are reshapes
            b_, nf_ = e.shape[:2]
            hps_parts.append((e * pw[:, None, :]).permute(0, 1, 3, 2, 4).reshape(b_, nf_, e.shape[3], -1))
            blocks = m.sum(1) * pw[:, :, None] * pw[:, None, :]  # [B, 68, 3, 3]
            h_ii = torch.zeros(b_, 68, 3, 68, 3, dtype=res.dtype, device=res.device)
            idx = torch.arange(68, device=res.device)
            h_ii[:, idx, :, idx, :] = blocks.permute(1, 0, 2, 3)
            h_ii = h_ii.reshape(b_, 204, 204)
        elif sel.dynamic:
            hps_parts.append(torch.einsum("bfkpc,bfkcn->bfpn", e, sel.id_b))
            h_ii = torch.einsum("bfkcm,bfkcn->bmn", sel.id_b, torch.einsum("bfkcd,bfkdn->bfkcn", m, sel.id_b))
        else:
            hps_parts.append(torch.einsum("bfkpc,kcn->bfpn", e, sel.id_b))
            h_ii = torch.einsum("kcm,bkcn->bmn", sel.id_b, torch.einsum("bkcd,kdn->bkcn", m.sum(1), sel.id_b))
        h_ii = h_ii + prob.lam_id * torch.eye(h_ii.shape[-1], dtype=res.dtype, device=res.device)
        v = torch.einsum("bfkrc,bfkr->bfkc", g, w[..., None] * res)
        g_i = (v.sum(1) * pw).reshape(v.shape[0], -1) if pw is not None else _contract(v, sel.id_b, sel.dynamic)
        rows.append([h_ii])
        gs_parts.append(g_i + prob.lam_id * st.idc)
    if free.focal:
        wjf = w[..., None] * jf
        hps_parts.append(torch.einsum("bfkrp,bfkr->bfp", jp, wjf)[..., None])
        h_ff = (jf * wjf).sum((1, 2, 3))[:, None, None]
        if free.id:
            v = torch.einsum("bfkrc,bfkr->bfkc", g, wjf)
            pw = prob.id_pointwise
            h_if = ((v.sum(1) * pw).reshape(v.shape[0], -1) if pw is not None
                    else _contract(v, sel.id_b, sel.dynamic))[..., None]
            rows[0].append(h_if)
            rows.append([h_if.transpose(-1, -2), h_ff])
        else:
            rows.append([h_ff])
        gs_parts.append((wjf * res).sum((1, 2, 3))[:, None])
    b, nf, _, _, p = jp.shape
    if not hps_parts:
        return res.new_zeros(b, nf, p, 0), res.new_zeros(b, 0, 0), res.new_zeros(b, 0)
    hss = torch.cat([torch.cat(r, -1) for r in rows], -2)
    return torch.cat(hps_parts, -1), hss, torch.cat(gs_parts, -1)


def linearize(prob: Problem, st: FitState, sel: Selection, free: Free) -> System:
    """Gauss-Newton normal equations at ``st`` for the pose and the unknowns in ``free``."""
    res, p = residuals(prob, st, sel)
    d, g = point_jacobians(prob, st, p)
    y = p - st.trans[:, :, None]  # rotated canonical points
    blocks = [torch.cross(y[..., None, :].expand_as(d), d, dim=-1), d]  # d/dω rows: Y × D_r; d/dt
    if free.exp:
        eq = "bfkrc,bfkcn->bfkrn" if sel.dynamic else "bfkrc,kcn->bfkrn"
        blocks.append(torch.einsum(eq, g, sel.exp_b))
    jp = torch.cat(blocks, -1)  # [B, F, 68, 2, P]
    w = robust_weights(prob, res)
    wjp = w[..., None, None] * jp
    hpp = torch.einsum("bfkrp,bfkrq->bfpq", jp, wjp)
    gp = torch.einsum("bfkrp,bfkr->bfp", wjp, res)
    if free.exp:
        ne = st.exp.shape[-1]
        hpp[..., 6:, 6:] += prob.lam_exp * torch.eye(ne, dtype=res.dtype, device=res.device)
        gp[..., 6:] += prob.lam_exp * st.exp
    jf = res + prob.obs - res.new_tensor([prob.cx, prob.cy])  # d pixel / d log focal
    hps, hss, gs = _shared_terms(prob, st, sel, free, jp, g, w, res, jf)
    return System(hpp, gp, hps, hss, gs)


def damp(h: Tensor, mu: Tensor) -> Tensor:
    """Marquardt damping ``H + μ·(diag(H) + ε)``, ``μ`` broadcastable to ``H``'s batch shape."""
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    eps = 1e-9 * diag.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    return h + torch.diag_embed(mu[..., None] * (diag + eps))


def spd_inverse(h: Tensor) -> Tensor:
    """Inverse of a batch of symmetric positive-definite matrices ``[..., n, n]``.

    Through the Cholesky factor: on the CPU ~10x faster than batched ``linalg.solve`` / ``inv`` for the
    many small blocks here (``cholesky_inverse`` up to 32 x 32, two triangular factors beyond, where
    ``cholesky_inverse`` becomes slow). A block that is not positive definite (numerically) gets a
    small diagonal load, logged.
    """
    chol, info = torch.linalg.cholesky_ex(h)
    if bool((info > 0).any()):
        bad = info > 0
        diag = torch.diagonal(h, dim1=-2, dim2=-1)
        load = 1e-8 * diag.abs().amax(-1).clamp_min(1e-12)
        eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
        h = torch.where(bad[..., None, None], h + load[..., None, None] * eye, h)
        chol, info = torch.linalg.cholesky_ex(h)
        logger.debug("spd_inverse: %d blocks needed a diagonal load", int(bad.sum()))
        if bool((info > 0).any()):
            raise torch.linalg.LinAlgError("normal equations are not positive definite")
    n = h.shape[-1]
    if n <= 32:
        return torch.cholesky_inverse(chol)
    eye = torch.eye(n, dtype=h.dtype, device=h.device).expand_as(h)
    linv = torch.linalg.solve_triangular(chol, eye, upper=False)
    return linv.transpose(-1, -2) @ linv


def solve_step(sys_: System, mu: Tensor) -> Tuple[Tensor, Tensor]:
    """Damped step: per-frame ``[B, F, P]`` and shared ``[B, Ns]`` increments (``mu``: ``[B, F]``)."""
    hinv = spd_inverse(damp(sys_.hpp, mu))  # [B, F, P, P]
    xg = (hinv @ sys_.gp[..., None])[..., 0]
    ns = sys_.hss.shape[-1]
    if ns == 0:
        return -xg, sys_.gs
    y = hinv @ sys_.hps  # [B, F, P, Ns]
    schur = damp(sys_.hss, mu[:, 0]) - torch.einsum("bfpm,bfpn->bmn", sys_.hps, y)
    rhs = sys_.gs - torch.einsum("bfpm,bfp->bm", sys_.hps, xg)
    ds = -(spd_inverse(schur) @ rhs[..., None])[..., 0]
    dp = -(xg + (y @ ds[:, None, :, None])[..., 0])
    return dp, ds


def apply_step(st: FitState, free: Free, dp: Tensor, ds: Tensor) -> FitState:
    """State after a step."""
    rot = so3_exp(dp[..., :3]) @ st.rot
    exp = st.exp + dp[..., 6:] if free.exp else st.exp
    idc, logf, k = st.idc, st.logf, 0
    if free.id:
        k = st.idc.shape[1]
        idc = st.idc + ds[:, :k]
    if free.focal:
        logf = st.logf + ds[:, k]
    return FitState(rot, st.trans + dp[..., 3:6], exp, idc, logf)


def _where_state(ok: Tensor, new: FitState, old: FitState) -> FitState:
    """Per-frame choice ``ok [B, F]`` between two states (shared unknowns follow frame 0)."""
    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(ok.reshape(ok.shape + (1,) * (a.ndim - 2)), a, b)

    okb = ok[:, 0]
    return FitState(pick(new.rot, old.rot), pick(new.trans, old.trans), pick(new.exp, old.exp),
                    torch.where(okb[:, None], new.idc, old.idc), torch.where(okb, new.logf, old.logf))


def lm_stage(prob: Problem, st: FitState, free: Free, iters: int, tol: float = 1e-6,
             mu0: float = 1e-3) -> FitState:
    """Levenberg-Marquardt iterations on the pose and the unknowns in ``free``.

    Frames are independent units (own damping, own accept / reject) when nothing shared is free;
    otherwise each problem is one unit. Stops early when every unit improves by less than ``tol``.
    """
    b, nf = st.trans.shape[:2]
    shared = free.id or free.focal
    mu = torch.full((b, nf), mu0, dtype=st.trans.dtype, device=st.trans.device)
    it = -1
    for it in range(iters):
        sel = select_vertices(prob, st)
        cost_f, cost_s = frame_costs(prob, st, sel)
        dp, ds = solve_step(linearize(prob, st, sel, free), mu)
        new = apply_step(st, free, dp, ds)
        new_f, new_s = frame_costs(prob, new, sel)
        if shared:
            old_u, new_u = cost_f.sum(1) + cost_s, new_f.sum(1) + new_s
            ok = ((new_u < old_u) & torch.isfinite(new_u))[:, None].expand(b, nf)
            gain = ((old_u - new_u) / old_u.clamp_min(1e-30))[:, None].expand(b, nf)
        else:
            ok = (new_f < cost_f) & torch.isfinite(new_f)
            gain = (cost_f - new_f) / cost_f.clamp_min(1e-30)
        st = _where_state(ok, new, st)
        mu = torch.where(ok, (mu / 3).clamp_min(1e-9), (mu * 5).clamp_max(1e9))
        if bool(ok.all()) and float(gain.max()) < tol:
            break
    logger.debug("lm_stage %s: %d iterations", free, it + 1)
    return st


def with_exp_basis(prob: Problem, exp_basis: Tensor) -> Problem:
    """``prob`` with a new σ-scaled, vertex-major expression basis ``[V, 3, Ne]``."""
    return replace(prob, exp_basis=exp_basis)


__all__ = ["FitState", "Free", "Problem", "Selection", "make_problem", "lm_stage", "select_vertices",
           "residuals", "frame_costs", "so3_exp", "project", "canonical", "linearize", "solve_step",
           "apply_step", "damp", "spd_inverse", "robust_weights", "huber_cost", "point_jacobians", "with_exp_basis"]
