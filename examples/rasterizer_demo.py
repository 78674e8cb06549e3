"""Rasterizer demo: fit a cloud of 3D Gaussians to a photograph with our differentiable rasterizer, then
render a short orbit video. Runs on CPU in about a minute; on a GPU when one is present.

This is the README's first command until the full video -> talking-head pipeline lands. It exercises the
same pieces training will: simple-knn scales, SH colours, the per-pixel background, and the gradients of
colour and alpha flowing back to every Gaussian parameter.

    python examples/rasterizer_demo.py [--out demo_out] [--iterations 300] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import simple_knn
from diff_gaussian_rasterization import build_info, look_at, make_settings, rasterize_gaussians


def target_image(size: int) -> torch.Tensor:
    """A face-like test pattern [3, H, W] in [0, 1], drawn procedurally (no data files needed)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.stack([0.15 + 0.1 * y, 0.2 + 0.05 * x, 0.35 + 0.1 * y]).clone()  # backdrop
    face = (x / 0.62) ** 2 + (y / 0.8) ** 2 < 1
    img[:, face] = torch.tensor([0.93, 0.76, 0.62]).unsqueeze(1)
    for cx in (-0.25, 0.25):
        eye = ((x - cx) / 0.12) ** 2 + ((y + 0.2) / 0.07) ** 2 < 1
        img[:, eye] = torch.tensor([0.15, 0.25, 0.45]).unsqueeze(1)
    mouth = (x / 0.3) ** 2 + ((y - 0.4) / 0.08) ** 2 < 1
    img[:, mouth] = torch.tensor([0.7, 0.2, 0.25]).unsqueeze(1)
    return img.clamp(0, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gaussians", type=int, default=4000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() and build_info()["cuda"]
                       else ("cpu" if args.device == "auto" else args.device))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    H = W = args.size
    target = target_image(H).to(dev)
    bg = torch.zeros(3, device=dev)
    tan = math.tan(math.radians(20))
    w2c = look_at((0.0, 0.0, -3.0), (0.0, 0.0, 0.0)).to(dev)
    settings = make_settings(w2c, tan, tan, H, W, bg=bg, sh_degree=1)

    # Gaussians on a slightly curved sheet facing the camera, scales from their 3 nearest neighbours.
    n = args.gaussians
    xy = (torch.rand(n, 2, device=dev) * 2 - 1) * 1.05
    means = torch.cat([xy, 0.15 * (xy ** 2).sum(-1, keepdim=True)], dim=-1)
    log_scale = torch.log(simple_knn.distCUDA2(means).clamp_min(1e-7).sqrt()).unsqueeze(-1).repeat(1, 3)
    params = {
        "means": means.requires_grad_(),
        "log_scales": log_scale.requires_grad_(),
        "quats": torch.tensor([[1.0, 0, 0, 0]], device=dev).repeat(n, 1).requires_grad_(),
        "opacity_logits": torch.full((n, 1), 0.0, device=dev).requires_grad_(),
        "shs": torch.zeros(n, 4, 3, device=dev).requires_grad_(),
    }
    opt = torch.optim.Adam([
        {"params": [params["means"]], "lr": 2e-3}, {"params": [params["log_scales"]], "lr": 5e-3},
        {"params": [params["quats"]], "lr": 1e-3}, {"params": [params["opacity_logits"]], "lr": 5e-2},
        {"params": [params["shs"]], "lr": 2.5e-2},
    ])

    def render(st):
        q = params["quats"] / params["quats"].norm(dim=-1, keepdim=True)
        return rasterize_gaussians(st, params["means"], torch.sigmoid(params["opacity_logits"]), shs=params["shs"],
                                   scales=torch.exp(params["log_scales"]), rotations=q)

    t0 = time.perf_counter()
    for it in range(1, args.iterations + 1):
        out = render(settings)
        loss = (out.color - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == 1:
            psnr = -10 * torch.log10(((out.color.detach() - target) ** 2).mean())
            print(f"iteration {it:4d}  L1 {loss.item():.4f}  PSNR {psnr.item():5.2f} dB", flush=True)
    fit_s = time.perf_counter() - t0

    frames = []
    with torch.no_grad():
        for k in range(48):
            ang = math.radians(25) * math.sin(2 * math.pi * k / 48)
            eye = (3.0 * math.sin(ang), 0.0, -3.0 * math.cos(ang))
            st = make_settings(look_at(eye, (0.0, 0.0, 0.0)).to(dev), tan, tan, H, W, bg=bg, sh_degree=1)
            img = render(st).color.clamp(0, 1)
            frames.append((img.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8))
    video = out_dir / "orbit.mp4"
    _write_mp4(video, frames, fps=24)
    print(f"fitted {n} Gaussians in {fit_s:.1f} s on {dev}; wrote {video.resolve()}")
    return 0


def _write_mp4(path: Path, frames, fps: int) -> None:
    import imageio_ffmpeg

    tmp = path.with_name(path.stem + ".partial.mp4")
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    tmp.replace(path)  # atomic: never a half-written video under the final name


if __name__ == "__main__":
    raise SystemExit(main())
