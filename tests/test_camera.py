"""The camera convention: tracked head pose -> transforms JSON -> rasterizer matrices (docs/camera.md)."""

import numpy as np
import pytest
import torch

from gaussiantalker.camera import (
    TRANSFORMS_SCALE, c2w_from_pose, cameras_from_pose, cameras_from_transforms, euler_from_rotation,
    project_points, rotation_from_euler,
)
from _tracking_helpers import euler_matrix


def _poses(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    euler = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.8, 1.2, 0.5], dtype=torch.float64)
    trans = torch.tensor([0.1, -0.2, -7.0], dtype=torch.float64) + 0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return euler, trans


def _tracker_projection(points, euler, trans, focal, cx, cy):
    """Reference §2.8, written out: X' = Rot X + t, u = -f X'/Z' + cx, v = f Y'/Z' + cy."""
    cam = torch.einsum("fij,nj->fni", rotation_from_euler(euler), points) + trans[:, None]
    return torch.stack([-focal * cam[..., 0] / cam[..., 2] + cx, focal * cam[..., 1] / cam[..., 2] + cy], -1)


def test_euler_matches_the_original_matrices_and_round_trips():
    euler, _ = _poses()
    rot = rotation_from_euler(euler)
    np.testing.assert_allclose(rot.numpy(), euler_matrix(euler.numpy()), atol=1e-12)
    torch.testing.assert_close(euler_from_rotation(rot), euler, atol=1e-10, rtol=0)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3))
    assert torch.allclose(torch.det(rot), torch.ones(6, dtype=torch.float64))


def test_transform_matrix_is_the_er_nerf_camera_to_world():
    euler, trans = _poses()
    c2w = c2w_from_pose(euler, trans)
    rot = rotation_from_euler(euler)
    torch.testing.assert_close(c2w[:, :3, :3], rot.transpose(1, 2))
    torch.testing.assert_close(c2w[:, :3, 3], -(rot.transpose(1, 2) @ (trans * 0.1)[..., None])[..., 0])
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(6, 4))


@pytest.mark.parametrize("size,cx,cy", [((512, 512), None, None), ((450, 600), None, None), ((480, 640), 300.3, 250.7)])
def test_rasterizer_reproduces_the_tracker_projection(size, cx, cy):
    h, w = size
    euler, trans = _poses()
    focal = 1100.0
    pts = torch.randn(50, 3, dtype=torch.float64) * 0.5
    ref = _tracker_projection(pts, euler, trans, focal, w / 2 if cx is None else cx, h / 2 if cy is None else cy)
    cams = cameras_from_transforms(c2w_from_pose(euler, trans), focal, w, h, cx, cy)
    got = project_points(pts * TRANSFORMS_SCALE, cams)  # the world is in scene units
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_matrices_follow_the_3dgs_row_vector_convention():
    euler, trans = _poses()
    cams = cameras_from_pose(euler, trans, 1000.0, 512, 512)
    # Row-vector viewmatrix: the head (near the origin) is in front of the camera, +z forward, y down.
    origin = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    view = origin @ cams.world_view_transform  # [B, 4]
    assert bool((view[:, 2] > 0.2).all()), "the rasterizer culls view depth <= 0.2"
    top = torch.tensor([0.0, 0.1, 0.0, 1.0], dtype=torch.float64) @ cams.world_view_transform
    assert bool((top[:, 1] < view[:, 1]).all()), "canonical up must be image up (camera y down)"
    torch.testing.assert_close(cams.full_proj_transform, cams.world_view_transform @ cams.projection_matrix)
    torch.testing.assert_close(torch.linalg.inv(cams.world_view_transform)[:, 3, :3], cams.camera_center)
    torch.testing.assert_close(cams.camera_center, c2w_from_pose(euler, trans)[:, :3, 3])
    torch.testing.assert_close(cams.w2c.transpose(1, 2), cams.world_view_transform)
    torch.testing.assert_close(cams.tanfovx, torch.full((6,), 512 / 2000.0, dtype=torch.float64))
    p = cams.projection_matrix[0].T  # column-vector P
    assert p[3, 2] == 1 and p[2, 2] == pytest.approx(100 / (100 - 0.01))
    assert p[2, 3] == pytest.approx(-100 * 0.01 / (100 - 0.01))


def test_original_scale_gives_gaussiantalkers_w2c():
    """§3.2: X_cam = diag(1, -1, -1)·(Rot·X + t) without the /10."""
    euler, trans = _poses()
    cams = cameras_from_pose(euler, trans, 1000.0, 512, 512, scale=1.0)
    expected = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ rotation_from_euler(euler)
    torch.testing.assert_close(cams.w2c[:, :3, :3], expected)
    torch.testing.assert_close(cams.w2c[:, :3, 3], trans * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))


def test_batched_equals_single_and_single_gives_floats():
    euler, trans = _poses()
    c2w = c2w_from_pose(euler, trans).float()
    batch = cameras_from_transforms(c2w, 1234.5, 512, 480)
    for i in (0, 3):
        one = cameras_from_transforms(c2w[i], 1234.5, 512, 480)
        assert isinstance(one.tanfovx, float) and one.world_view_transform.shape == (4, 4)
        torch.testing.assert_close(one.full_proj_transform, batch.full_proj_transform[i])
        torch.testing.assert_close(one.camera_center, batch.camera_center[i])
    assert batch.full_proj_transform.dtype == torch.float32


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="transform_matrix"):
        cameras_from_transforms(torch.eye(3), 1000.0, 512, 512)
    with pytest.raises(ValueError, match="focal"):
        cameras_from_transforms(torch.eye(4).expand(2, 4, 4), torch.ones(3), 512, 512)
    with pytest.raises(ValueError, match="positive"):
        cameras_from_transforms(torch.eye(4), -5.0, 512, 512)
    with pytest.raises(ValueError, match="euler"):
        rotation_from_euler(torch.zeros(4, 2))
