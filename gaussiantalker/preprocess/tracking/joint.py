"""Joint bundle adjustment of the offline model with its learned expression basis.

Unknowns: per frame the pose and the expression coefficients ``c_f`` (``P = 6 + K``), per landmark its
shape offset and its ``K`` basis rows (``Q = 3 + 3K``); the focal length is fixed here. The model
``X_fk = S_k + Σ_j c_fj·E_jk`` is bilinear, and alternating between coefficients and basis converges
slowly; this stage takes Levenberg-Marquardt steps in all unknowns at once. The normal equations have
block-diagonal frame blocks and block-diagonal landmark blocks coupled through ``H_pq``: the frames are
eliminated exactly and the landmark system (the Schur complement) is solved by conjugate gradients
preconditioned with its landmark blocks, using matrix-free products (the "iterative Schur" scheme of
large-scale bundle adjustment). Rigid landmarks have no basis rows (pinned to zero).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from .solver import FitState, Problem, damp, huber_cost, point_jacobians, residuals, robust_weights, \
    select_vertices, so3_exp, spd_inverse, with_exp_basis

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass
class _Linear:
    hpp: Tensor  # [F, P, P]
    gp: Tensor  # [F, P]
    hqq: Tensor  # [68, Q, Q]
    gq: Tensor  # [68, Q]
    a: Tensor  # [F, 68, P, 3] J_pᵀ·W·G: every frame-landmark coupling passes through the 3D point
    mask: Tensor  # [68, Q] free landmark unknowns
    ctil: Tensor  # [F, 1 + K] (1, c_f)
    scale: Tensor  # [68, 1 + K, 3] σ of the landmark unknowns


def _units(prob: Problem, sigma: Tensor) -> Tensor:
    """Basis ``[68, 3, K]`` in σ units (zero where σ = 0)."""
    return torch.where(sigma[..., None] > 0, prob.exp_basis / sigma.clamp_min(1e-12)[..., None],
                       torch.zeros_like(prob.exp_basis))


def _total_cost(prob: Problem, st: FitState, sigma: Tensor, lam_basis: float) -> Tensor:
    res, _ = residuals(prob, st, select_vertices(prob, st))
    cost = huber_cost(prob, res).sum() + prob.lam_exp * (st.exp ** 2).sum()
    return cost + prob.lam_id * (st.idc ** 2).sum() + lam_basis * (_units(prob, sigma) ** 2).sum()


def _linearize(prob: Problem, st: FitState, sigma: Tensor, lam_basis: float) -> _Linear:
    res, p = residuals(prob, st, select_vertices(prob, st))
    d, g = point_jacobians(prob, st, p)
    res, d, g, p = res[0], d[0], g[0], p[0]
    y = p - st.trans[0, :, None]
    ebasis = prob.exp_basis  # [68, 3, K]
    k = ebasis.shape[-1]
    jp = torch.cat([torch.cross(y[..., None, :].expand_as(d), d, dim=-1), d,
                    torch.einsum("fkrc,kcn->fkrn", g, ebasis)], -1)  # [F, 68, 2, P]
    w = robust_weights(prob, res[None])[0]
    wjp = w[..., None, None] * jp
    hpp = torch.einsum("fkrp,fkrq->fpq", jp, wjp)
    gp = torch.einsum("fkrp,fkr->fp", wjp, res)
    c = st.exp[0]
    hpp[:, 6:, 6:] += prob.lam_exp * torch.eye(k, dtype=res.dtype, device=res.device)
    gp[:, 6:] += prob.lam_exp * c

    id_sigma = prob.model.id_sigma.reshape(68, 3)
    m = torch.einsum("fkrc,fkrd,fk->fkcd", g, g, w)
    v = torch.einsum("fkrc,fkr,fk->fkc", g, res, w)
    ctil = torch.cat([torch.ones_like(c[:, :1]), c], -1)  # [F, 1 + K]
    scale = torch.cat([id_sigma[:, None], sigma[:, None].expand(68, k, 3)], 1)  # [68, 1 + K, 3]
    n = 3 * (k + 1)
    hqq = (torch.einsum("fi,fj,fkcd->kicjd", ctil, ctil, m)
           * scale[:, :, :, None, None] * scale[:, None, None, :, :]).reshape(68, n, n)
    gq = (torch.einsum("fi,fkc->kic", ctil, v) * scale).reshape(68, n)
    theta = torch.cat([st.idc[0].reshape(68, 1, 3), _units(prob, sigma).permute(0, 2, 1)], 1).reshape(68, n)
    prior = torch.cat([torch.full((68, 3), prob.lam_id), torch.full((68, 3 * k), lam_basis)], 1).to(hqq)
    mask = torch.cat([torch.ones(68, 1, 3, dtype=torch.bool, device=hqq.device),
                      (sigma > 0)[:, None].expand(68, k, 3)], 1).reshape(68, n)
    hqq = hqq * (mask[:, :, None] & mask[:, None, :]) + torch.diag_embed(prior + (~mask).to(hqq.dtype))
    gq = torch.where(mask, gq + prior * theta, torch.zeros_like(gq))
    a = torch.einsum("fkrp,fkrc->fkpc", wjp, g)
    return _Linear(hpp, gp, hqq, gq, a, mask, ctil, scale)


def _products(lin: _Linear) -> Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """Matrix-free ``H_pq·v`` (``[68, Q]`` -> ``[F, P]``) and ``H_qp·y`` (``[F, P]`` -> ``[68, Q]``).

    ``H_pq[f, k]·v_k = A_fk·u_fk`` with ``u_fk = Σ_i ctil_fi·σ_ki ⊙ v_ki``, the 3D displacement of
    landmark k in frame f."""
    k1 = lin.ctil.shape[1]

    def hpq(v: Tensor) -> Tensor:
        v = (v * lin.mask).reshape(68, k1, 3) * lin.scale
        u = torch.einsum("fi,kic->fkc", lin.ctil, v)
        return torch.einsum("fkpc,fkc->fp", lin.a, u)

    def hqp(y: Tensor) -> Tensor:
        z = torch.einsum("fkpc,fp->fkc", lin.a, y)
        out = torch.einsum("fi,fkc->kic", lin.ctil, z) * lin.scale
        return out.reshape(68, -1) * lin.mask

    return hpq, hqp


def _schur_blocks(lin: _Linear, hqq: Tensor, hpp_inv: Tensor) -> Tensor:
    """Landmark diagonal blocks of the Schur complement ``S_kk = H_qq,k - Σ_f H_qp H_pp⁻¹ H_pq`` (the
    preconditioner): ``H_pq[f, k]`` factors through ``A_fk``, so this costs one 3x3 product per (f, k)."""
    b = torch.einsum("fkpc,fpq,fkqd->fkcd", lin.a, hpp_inv, lin.a)  # [F, 68, 3, 3]
    k1 = lin.ctil.shape[1]
    n = 3 * k1
    blocks = torch.einsum("fi,fj,fkcd->kicjd", lin.ctil, lin.ctil, b)
    blocks = (blocks * lin.scale[:, :, :, None, None] * lin.scale[:, None, None, :, :]).reshape(68, n, n)
    return hqq - blocks * (lin.mask[:, :, None] & lin.mask[:, None, :])


def _pcg(apply_s: Callable[[Tensor], Tensor], precond: Tensor, b: Tensor, iters: int, tol: float) -> Tensor:
    """Preconditioned conjugate gradients for ``S x = b`` (``x``, ``b``: ``[68, Q]``; ``precond`` the
    inverse landmark blocks ``[68, Q, Q]``)."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = (precond @ r[..., None])[..., 0]
    p = z.clone()
    rz = (r * z).sum()
    b_norm = b.norm().clamp_min(1e-30)
    for _ in range(iters):
        sp = apply_s(p)
        alpha = rz / (p * sp).sum().clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * sp
        if float(r.norm() / b_norm) < tol:
            break
        z = (precond @ r[..., None])[..., 0]
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def joint_stage(prob: Problem, st: FitState, sigma: Tensor, lam_basis: float, iters: int,
                cg_iters: int = 10, cg_tol: float = 1e-2, tol: float = 1e-7) -> Tuple[Problem, FitState]:
    """Levenberg-Marquardt in poses, coefficients, shape and basis jointly (offline model, B = 1).

    Args:
        prob: problem whose model is the offline landmark model (pointwise identity).
        st: current state; its focal length stays fixed.
        sigma: ``[68, 3]`` basis σ per landmark (zeros for rigid landmarks).
        lam_basis: prior weight per basis coefficient (σ units).
        iters: maximum LM iterations.
    Returns:
        the problem with the refined basis, and the refined state.
    """
    mu = 1e-3
    k = prob.exp_basis.shape[-1]
    cost = _total_cost(prob, st, sigma, lam_basis)
    it = -1
    for it in range(iters):
        lin = _linearize(prob, st, sigma, lam_basis)
        mu_f = torch.full(lin.hpp.shape[:1], mu, dtype=lin.hpp.dtype, device=lin.hpp.device)
        hpp_inv = spd_inverse(damp(lin.hpp, mu_f))
        hqq = damp(lin.hqq, torch.full(lin.hqq.shape[:1], mu, dtype=lin.hqq.dtype, device=lin.hqq.device))
        hpq, hqp = _products(lin)
        xg = (hpp_inv @ lin.gp[..., None])[..., 0]

        def apply_s(v: Tensor) -> Tensor:
            return (hqq @ v[..., None])[..., 0] - hqp((hpp_inv @ hpq(v)[..., None])[..., 0])

        dq = _pcg(apply_s, spd_inverse(_schur_blocks(lin, hqq, hpp_inv)), -(lin.gq - hqp(xg)), cg_iters, cg_tol)
        dp = -(xg + (hpp_inv @ hpq(dq)[..., None])[..., 0])
        theta = dq.reshape(68, k + 1, 3)
        units = _units(prob, sigma) + theta[:, 1:].permute(0, 2, 1)
        new_prob = with_exp_basis(prob, units * sigma[..., None])
        new_st = FitState(so3_exp(dp[None, :, :3]) @ st.rot, st.trans + dp[None, :, 3:6],
                          st.exp + dp[None, :, 6:], st.idc + theta[:, 0].reshape(1, -1), st.logf)
        new_cost = _total_cost(new_prob, new_st, sigma, lam_basis)
        if bool(torch.isfinite(new_cost)) and float(new_cost) < float(cost):
            gain = float((cost - new_cost) / cost)
            prob, st, cost = new_prob, new_st, new_cost
            mu = max(mu / 3.0, 1e-9)
            if gain < tol:
                break
        else:
            mu = min(mu * 5.0, 1e9)
    logger.debug("joint_stage: %d iterations, cost %.3f", it + 1, float(cost))
    return prob, st


__all__ = ["joint_stage"]
