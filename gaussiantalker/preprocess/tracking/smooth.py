"""Frame-wise refinement with the temporal smoothness term of reference §2.8 (stage 4).

Cost: the landmark terms of :mod:`.solver` (pose and expression per frame; identity and focal fixed) plus ``λ Σ_f Σ_j |Q_fj - ½Q_{f-1,j} - ½Q_{f+1,j}|²`` on the posed rigid points
``Q_fj = R_f·Y_j + t_f`` (the original's kernel (-½, 1, -½) along time). Unlike the original (batches of
32 frames, 5 detached frames of overlap, Adam) the whole clip is solved at once with Gauss-Newton:
expressions are eliminated per frame, leaving a block-banded system in the 6F pose
unknowns (blocks couple frames up to two apart) that LAPACK's banded Cholesky solves in O(F).
"""

from __future__ import annotations

import logging
from typing import Tuple

import numpy as np
import torch

from .solver import FitState, Free, Problem, apply_step, damp, frame_costs, linearize, select_vertices, spd_inverse

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

_BAND = 17  # lower bandwidth of the 6F x 6F pose system: blocks two frames apart, 6 x 6 each


def _skew_neg(y: Tensor) -> Tensor:
    """``[..., 3]`` -> ``[..., 3, 3]`` matrix of ``ω -> ω × y`` (= ``-[y]×``)."""
    z = torch.zeros_like(y[..., 0])
    return torch.stack([
        torch.stack([z, y[..., 2], -y[..., 1]], -1),
        torch.stack([-y[..., 2], z, y[..., 0]], -1),
        torch.stack([y[..., 1], -y[..., 0], z], -1),
    ], -2)


def laplacian_terms(rot: Tensor, trans: Tensor, rigid: Tensor, lam: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Cost, gradient and block-banded Gauss-Newton matrix of the temporal Laplacian.

    Args:
        rot: ``[F, 3, 3]``; trans: ``[F, 3]``; rigid: ``[R, 3]`` canonical rigid points; lam: weight.
    Returns:
        cost ``[]``, gradient ``[F, 6]``, diagonal blocks ``[F, 6, 6]``, first and second sub-diagonal
        blocks ``[F-1, 6, 6]`` (block (g+1, g)) and ``[F-2, 6, 6]`` (block (g+2, g)).
    """
    nf = rot.shape[0]
    y = torch.einsum("fij,rj->fri", rot, rigid)  # [F, R, 3]
    q = y + trans[:, None]
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device).expand(y.shape + (3,))
    jac = torch.cat([_skew_neg(y), eye], -1)  # [F, R, 3, 6] d Q / d (ω, τ)
    lap = torch.zeros_like(q)
    lap[1:-1] = q[1:-1] - 0.5 * (q[:-2] + q[2:])  # residual at centre frames 1..F-2
    cost = lam * (lap ** 2).sum()
    pad = torch.nn.functional.pad(lap, (0, 0, 0, 0, 1, 1))  # index f + 1 = frame f
    mix = pad[1:-1] - 0.5 * (pad[2:] + pad[:-2])  # Σ_f a_{g-f} l_f for every frame g
    grad = lam * torch.einsum("frcp,frc->fp", jac, mix)

    centre = torch.zeros(nf + 2, dtype=rot.dtype, device=rot.device)
    centre[2:nf] = 1.0  # centre[f + 1] = 1 when f is a valid centre frame (1..F-2)
    c0 = centre[1:-1] + 0.25 * (centre[2:] + centre[:-2])  # Σ a² over the centres touching frame g
    c1 = -0.5 * (centre[1:-2] + centre[2:-1])  # pairs (g, g+1) within centres g and g+1
    c2 = 0.25 * centre[2:-2]  # pair (g, g+2) within centre g+1
    n0 = torch.einsum("frcp,frcq->fpq", jac, jac)
    n1 = torch.einsum("frcp,frcq->fpq", jac[1:], jac[:-1])
    n2 = torch.einsum("frcp,frcq->fpq", jac[2:], jac[:-2])
    return cost, grad, lam * c0[:, None, None] * n0, lam * c1[:nf - 1, None, None] * n1, \
        lam * c2[:nf - 2, None, None] * n2


def solve_banded_blocks(d0: Tensor, d1: Tensor, d2: Tensor, rhs: Tensor) -> Tensor:
    """Solve the symmetric positive-definite block-banded system (6 x 6 blocks, two off-diagonals).

    Args:
        d0: ``[F, 6, 6]`` diagonal blocks; d1: ``[F-1, 6, 6]`` blocks (g+1, g); d2: ``[F-2, 6, 6]``
            blocks (g+2, g); rhs: ``[F, 6]``.
    Returns:
        ``[F, 6]`` solution (same dtype / device as ``rhs``).
    Raises:
        numpy.linalg.LinAlgError: when the matrix is not positive definite.
    """
    from scipy.linalg import solveh_banded

    nf = d0.shape[0]
    n = 6 * nf
    ab = np.zeros((_BAND + 1, n))
    r, c = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    for dist, blocks in ((0, d0), (1, d1), (2, d2)):
        nb = blocks.shape[0]
        if nb == 0:
            continue
        vals = blocks.detach().cpu().double().numpy()
        g = np.arange(nb)[:, None, None]
        row = np.broadcast_to(6 * dist + r - c, vals.shape)
        col = np.broadcast_to(6 * g + c, vals.shape)
        keep = row >= 0  # the diagonal blocks contribute their lower triangle only
        ab[row[keep], col[keep]] = vals[keep]
    x = solveh_banded(ab, rhs.detach().cpu().double().numpy().reshape(n), lower=True)
    return torch.as_tensor(x.reshape(nf, 6), dtype=rhs.dtype, device=rhs.device)


def smooth_stage(prob: Problem, st: FitState, free: Free, rigid: Tensor, lam: float, iters: int,
                 mu0: float = 1e-3) -> FitState:
    """Levenberg-Marquardt on pose (+ expression) with the temporal term.

    Args:
        prob: the fit's problem (B = 1); st: current state; free: per-frame unknowns besides the pose
        (``id``/``focal`` must be False); rigid: ``[R, 3]`` canonical rigid points; lam: weight per
        coordinate; iters: maximum iterations.
    """
    if free.id or free.focal:
        raise ValueError("smooth_stage keeps identity and focal fixed")
    if st.trans.shape[0] != 1:
        raise ValueError(f"smooth_stage needs one problem, got B = {st.trans.shape[0]}")
    nf = st.trans.shape[1]
    if nf < 3 or iters <= 0:
        return st
    mu = mu0

    def total(state: FitState, sel) -> Tensor:
        cf, _ = frame_costs(prob, state, sel)
        return cf.sum() + laplacian_terms(state.rot[0], state.trans[0], rigid, lam)[0]

    it = -1
    for it in range(iters):
        sel = select_vertices(prob, st)
        old = total(st, sel)
        sys_ = linearize(prob, st, sel, free)
        hpp = damp(sys_.hpp, torch.full(sys_.hpp.shape[:2], mu, dtype=st.trans.dtype, device=st.trans.device))[0]
        gp = sys_.gp[0]
        _, lgrad, l0, l1, l2 = laplacian_terms(st.rot[0], st.trans[0], rigid, lam)
        h66, g6 = hpp[:, :6, :6], gp[:, :6]
        ne = hpp.shape[-1] - 6
        if ne:
            sol = spd_inverse(hpp[:, 6:, 6:]) @ torch.cat([hpp[:, 6:, :6], gp[:, 6:, None]], -1)
            h66 = h66 - hpp[:, :6, 6:] @ sol[..., :6]
            g6 = g6 - (hpp[:, :6, 6:] @ sol[..., 6:])[..., 0]
        l0 = l0 + torch.diag_embed(mu * torch.diagonal(l0, dim1=-2, dim2=-1))
        try:
            dpose = -solve_banded_blocks(h66 + l0, l1, l2, g6 + lgrad)
        except np.linalg.LinAlgError:
            mu *= 10.0
            continue
        dp = dpose
        if ne:
            dexp = -(sol[..., 6:][..., 0] + (sol[..., :6] @ dpose[..., None])[..., 0])
            dp = torch.cat([dpose, dexp], -1)
        new = apply_step(st, free, dp[None], sys_.gs)
        new_cost = total(new, sel)
        if bool(torch.isfinite(new_cost)) and float(new_cost) < float(old):
            gain = float((old - new_cost) / old)
            st = new
            mu = max(mu / 3.0, 1e-9)
            if gain < 1e-7:
                break
        else:
            mu = min(mu * 5.0, 1e9)
    logger.debug("smooth_stage: %d iterations", it + 1)
    return st


__all__ = ["smooth_stage", "laplacian_terms", "solve_banded_blocks"]
