# ruff: noqa: C408  (the original's file shape: GroupName = dict(...))
# A small configuration that trains a useful model on a CPU in minutes (our preset, not the original's).
# Parsed as data (ast.literal_eval of each value), never executed. Every key not set here keeps the value
# of 64_dim_1_transformer (see gaussiantalker/config.py); the changes and why:
ModelHiddenParams = dict(
    # Coarser planes: 32x32 and 64x64 (scales 1 and 2) instead of 64 and 128. The tri-plane only has to
    # describe a few thousand Gaussians on a head at 256 px; 4x fewer plane texels to update.
    kplanes_config={
        'grid_dimensions': 2,
        'input_coordinate_dim': 3,
        'output_coordinate_dim': 32,
        'resolution': [32, 32, 32],
    },
    multires=[1, 2],
    d_model=64,  # = 32 channels x 2 scales (the tri-plane feature is the attention query)
    net_width=64,  # hidden width of the tri-plane MLP and of the five offset heads (128): they run on B x N
    defor_depth=2,
    n_head=2,
    ffn_hidden=128,
    n_layer=1,
    # No dropout in the attention (0.2 in the original): its masks cost ~1/6 of a fine step on a CPU, and without
    # them the renderer follows the tracked lip code closer (German r 0.72-0.83 -> 0.87 from the tracked codes;
    # docs/quality.md).
    drop_prob=0.0,
    # Ours: the audio path predicts a 6-component lip code (taught by the tracked mouth landmarks; a kernel
    # regression fitted before training, lip_predictor="kernel", the default) and the attention's audio token
    # encodes that code; see docs/quality.md for the ablation that chose it.
    lip_code_dim=6,
    # Each Gaussian around the mouth also answers the lip code on its own (a learnt linear response of its position,
    # colour and opacity): through the shared token alone the widest mouths came out half open, teeth a pale band.
    # Six runs (two clips, three seeds): mouth amplitude 0.69-0.87 -> 0.81-0.91, r >= 0.72 in all (docs/quality.md).
    lip_blendshapes=True,
)
OptimizationParams = dict(
    # 1000 + 1250 iterations instead of 7999 + 10000 (1250 fine steps without dropout cost what 1000 with it did).
    coarse_iterations=1000,
    iterations=1250,
    # 4 frames per fine-stage step instead of 32: the per-Gaussian attention and heads cost B x N.
    batch_size=4,
    # The learning-rate decays span 2500 steps (20000 in the original), so a short run travels about as
    # far down the schedule (40-50%) as the original's 8k / 10k-iteration stages do.
    position_lr_max_steps=2500,
    deformation_lr_init=0.0001,
    deformation_lr_final=0.00001,
    # Densification scaled to the short coarse stage: from iteration 200 to 800, every 100.
    densify_from_iter=200,
    densify_until_iter=800,
    densification_interval=100,
    pruning_from_iter=200,
    pruning_interval=100,
    densify_grad_threshold_coarse=0.001,
    opacity_reset_interval=600,  # size-based pruning after 600 iterations (3000 of 7999 in the original)
    lip_fine_tuning=True,
    lip_weight=2.0,  # the lip-crop L1 at 5x the original's 0.4: the mouth is a small part of a 256 px frame
    # The renderer learns from the tracked lip codes only (0.5 until 2026-12-06: half of the fine-stage frames on
    # the code the audio predicts for them). Without dropout a renderer shown predicted codes learns the mean
    # mouth of what each code may stand for: German amplitude 0.87-0.97 -> 0.56-0.71. With tracked codes only it
    # draws each code's own mouth, and the four development runs met r >= 0.7 with amplitude 0.78-0.87
    # (docs/quality.md).
    lip_code_predicted_share=0.0,
    # The blendshapes' position bases at a tenth of the positions' rate: at the full rate the widest mouths broke
    # into specks (small Gaussians by the lips wandering), at a tenth they stay whole and the lips still part.
    lip_basis_xyz_lr_scale=0.1,
    depth_fine_tuning=True,
    canonical_tri_plane_factor_list=["opacity", "shs"],
    # One more SH band every 500 iterations (1000 in the original): degree 1 from coarse 500, 2 from fine 500;
    # never raised in the last half interval of a stage, where it would stay untrained.
    sh_degree_interval=500,
    checkpoint_every=500,
    preview_every=250,
)
ModelParams = dict(
    sh_degree=3,
    resolution=256,  # train at 256x256 (4x fewer pixels than 512): the rasterizer's cost scales with pixels
    max_points=8000,  # a random 8k of the ~35k tracked vertices: enough for a 256 px head
    max_gaussians=16000,  # densification cap (50k in the original)
    # Keep decoded 256 px frames in memory (~0.46 MB each: a 1-minute clip at 30 fps fits in ~830 MB): decoding a
    # frame's JPEG and two PNGs from disk took ~1/8 of a fine step on 2 cores.
    cache_mb=1024,
)
