"""The offline model's small expression space, learned from the video itself.

The offline model has no expression basis to start with. Its non-rigid landmarks (mouth, jaw, brows,
lids, nose base) get ``K`` shared basis vectors, estimated from the clip: a rank-``K`` non-rigid
structure-from-motion model ``X_fk = S_k + Σ_j c_fj·E_jk``. Rigid landmarks (nose bridge, eye corners,
tragus-level jaw) have ``E = 0``, so the basis cannot imitate a head rotation and speech cannot leak
into the pose: the pose is carried by points the expressions cannot move.

After a rigid fit, :func:`init_basis_pca` lifts the residuals of the non-rigid landmarks to canonical
3D displacements (in the image plane at the point's depth); their mean goes to the shape and their
principal components start the basis (the usual NRSfM initialisation). :mod:`.joint` then refines
poses, coefficients, shape and basis together.

The priors ``λ_c |c|²`` (per frame) and ``λ_E |E/σ|²`` together act as a nuclear-norm penalty on the
displacements, so weak components shrink instead of fitting noise.
"""

from __future__ import annotations

import logging
from typing import Tuple

import torch

from .solver import FitState, Problem, residuals, select_vertices, with_exp_basis

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


def init_basis_pca(prob: Problem, st: FitState, point_sigma: Tensor, k: int) -> Tuple[Problem, FitState]:
    """Start a ``k``-component basis from the principal non-rigid residual displacements.

    Args:
        prob, st: a fit of one problem (B = 1) without expressions; the model's vertices are its
            68 landmarks (offline model).
        point_sigma: ``[68, 3]`` basis σ per landmark (zeros for rigid points).
        k: number of components.
    Returns:
        the problem with the new basis and the state with the matching coefficients ``[1, F, k]``.
    """
    sel = select_vertices(prob, st)
    res, p = residuals(prob, st, sel)  # [1, F, 68, 2], [1, F, 68, 3]
    f = st.logf.exp()[:, None, None]
    z = p[..., 2]
    disp_cam = torch.stack([res[..., 0] * z / f, -res[..., 1] * z / f, torch.zeros_like(z)], -1)
    disp = torch.einsum("bfji,bfkj->bfki", st.rot, disp_cam)[0]  # Rᵀ·d, canonical frame [F, 68, 3]
    active = point_sigma > 0
    units = torch.where(active, disp / point_sigma.clamp_min(1e-12), torch.zeros_like(disp))
    flat = units.reshape(units.shape[0], -1)
    mean = flat.mean(0, keepdim=True)
    flat = flat - mean
    nf = flat.shape[0]
    # The mean displacement of the moving landmarks is their neutral shape: it goes to the identity.
    id_sigma = prob.model.id_sigma.reshape(68, 3)
    idc = st.idc + (mean.reshape(68, 3) * point_sigma / id_sigma).reshape(1, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k_eff = min(k, s.shape[0])
    basis = torch.zeros(68, 3, k, dtype=flat.dtype, device=flat.device)
    scale = s[:k_eff] / nf ** 0.5
    basis[..., :k_eff] = (vh[:k_eff] * scale[:, None]).T.reshape(68, 3, k_eff) * point_sigma[..., None]
    coeff = torch.zeros(1, nf, k, dtype=flat.dtype, device=flat.device)
    coeff[0, :, :k_eff] = u[:, :k_eff] * nf ** 0.5
    logger.debug("expression PCA: singular values %s", [round(float(v), 2) for v in s[: k_eff + 2]])
    return with_exp_basis(prob, basis), FitState(st.rot, st.trans, coeff, idc, st.logf)


__all__ = ["init_basis_pca"]
