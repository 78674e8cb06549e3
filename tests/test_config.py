"""Configuration presets, parsing as data, unknown keys, JSON round trip, preset resolution."""

from __future__ import annotations

import json

import pytest

from gaussiantalker.config import (
    ConfigError,
    TrainConfig,
    list_presets,
    load_config,
    parse_config_file,
    preset_dir,
    resolve_config,
)


def test_presets_exist():
    assert {"64_dim_1_transformer", "64_dim_2_transformer", "cpu_small"} <= set(list_presets())


@pytest.mark.parametrize("name,n_layer", [("64_dim_1_transformer", 1), ("64_dim_2_transformer", 2)])
def test_shipped_presets_hold_the_original_values(name, n_layer):
    cfg = load_config(name)
    h, o, m = cfg.hidden, cfg.optimization, cfg.model
    assert h.n_layer == n_layer
    assert h.kplanes_config == {"grid_dimensions": 2, "input_coordinate_dim": 3, "output_coordinate_dim": 32,
                                "resolution": [64, 64, 64]}
    assert h.multires == [1, 2] and h.defor_depth == 2 and h.net_width == 128
    assert (h.d_model, h.n_head, h.ffn_hidden, h.drop_prob) == (64, 2, 128, 0.2)
    assert (h.plane_tv_weight, h.time_smoothness_weight, h.l1_time_planes) == (0.0002, 0.001, 0.0001)
    assert not (h.no_do or h.no_dshs or h.no_ds or h.no_dx or h.no_dr) and h.train_tri_plane
    assert (o.iterations, o.coarse_iterations, o.batch_size) == (10000, 7999, 32)
    assert (o.densify_from_iter, o.densification_interval, o.densify_until_iter) == (1000, 100, 7000)
    assert o.densify_grad_threshold_coarse == 0.001 and o.opacity_threshold_coarse == 0.005
    assert (o.deformation_lr_init, o.deformation_lr_final) == (0.0001, 0.00001)
    assert (o.position_lr_init, o.position_lr_final, o.position_lr_max_steps) == (0.00016, 0.0000016, 20000)
    assert (o.grid_lr_init, o.grid_lr_final, o.feature_lr, o.opacity_lr) == (0.0016, 0.00016, 0.0025, 0.05)
    assert (o.scaling_lr, o.rotation_lr, o.percent_dense) == (0.005, 0.001, 0.01)
    assert o.lip_fine_tuning and o.depth_fine_tuning and not o.split_gs_in_fine_stage
    assert o.canonical_tri_plane_factor_list == ["opacity", "shs"]
    assert m.sh_degree == 3


def test_cpu_small_is_smaller():
    small, full = load_config("cpu_small"), load_config("64_dim_1_transformer")
    assert small.model.resolution == 256 and 0 < small.model.max_points < 35000
    assert small.optimization.iterations < full.optimization.iterations
    assert small.optimization.coarse_iterations < full.optimization.coarse_iterations
    assert 4 <= small.optimization.batch_size <= 8


def test_default_is_the_first_preset():
    assert load_config().to_dict()["ModelHiddenParams"] == load_config("64_dim_1_transformer").to_dict()[
        "ModelHiddenParams"]


@pytest.mark.parametrize("spelling", ["64_dim_1_transformer", "64_dim_1_transformer.py",
                                      "configs/64_dim_1_transformer.py", "arguments/64_dim_1_transformer.py"])
def test_preset_resolution_from_any_directory(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(spelling) == preset_dir() / "64_dim_1_transformer.py"


def test_an_existing_file_wins_over_a_preset(tmp_path):
    own = tmp_path / "64_dim_1_transformer.py"
    own.write_text("OptimizationParams = dict(iterations=7)\n")
    assert resolve_config(own) == own
    assert load_config(own).optimization.iterations == 7


def test_missing_config_lists_the_presets():
    with pytest.raises(FileNotFoundError, match="cpu_small"):
        resolve_config("no_such_config")


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("OptimizationParams = dict(iterations=10, itterations=5)\n")
    with pytest.raises(ConfigError, match=r"itterations") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_text("Hidden = dict(n_layer=1)\n")
    with pytest.raises(ConfigError, match="Hidden"):
        load_config(path)
    path.write_text("ModelHiddenParams = dict(kplanes_config={'grid_dimensions': 2, 'resolutoin': [8, 8, 8]})\n")
    with pytest.raises(ConfigError, match="resolutoin"):
        load_config(path)


def test_config_files_are_never_executed(tmp_path):
    marker = tmp_path / "executed"
    for text in (f"import os\nos.makedirs({str(marker)!r})\n",
                 f"OptimizationParams = dict(iterations=__import__('os').makedirs({str(marker)!r}))\n",
                 "OptimizationParams = dict(**{'iterations': 3})\n"):
        path = tmp_path / "evil.py"
        path.write_text(text)
        with pytest.raises(ConfigError):
            parse_config_file(path)
        assert not marker.exists()


def test_wrong_types_and_unsupported_values(tmp_path):
    path = tmp_path / "t.py"
    path.write_text("OptimizationParams = dict(iterations='many')\n")
    with pytest.raises(ConfigError, match="iterations"):
        load_config(path)
    path.write_text("ModelHiddenParams = dict(d_model=128)\n")
    with pytest.raises(ConfigError, match="d_model"):
        load_config(path)
    path.write_text("ModelHiddenParams = dict(apply_rotation=True)\n")
    with pytest.raises(ConfigError, match="apply_rotation"):
        load_config(path)


def test_overrides_and_json_round_trip(tmp_path):
    cfg = load_config("cpu_small", iterations=12, batch_size=2, kplanes_config={"resolution": [8, 8, 8]})
    assert cfg.optimization.iterations == 12 and cfg.optimization.batch_size == 2
    assert cfg.hidden.kplanes_config["resolution"] == [8, 8, 8]
    assert cfg.hidden.kplanes_config["output_coordinate_dim"] == 32
    with pytest.raises(ConfigError, match="no_such_key"):
        load_config("cpu_small", no_such_key=1)
    path = cfg.save(tmp_path / "config.json")
    data = json.loads(path.read_text())  # plain JSON
    assert data["OptimizationParams"]["iterations"] == 12
    back = TrainConfig.from_json(path)
    assert back == cfg
    assert load_config(path) == cfg
    data["OptimizationParams"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict(data, "x.json")


def test_replace_validates():
    cfg = load_config("cpu_small")
    before = cfg.optimization.iterations
    assert before != 3 and cfg.replace(iterations=3).optimization.iterations == 3
    assert cfg.optimization.iterations == before  # replace leaves the original alone
    with pytest.raises(ConfigError):
        cfg.replace(batch_size=0)
    with pytest.raises(ConfigError, match="lip_code_predicted_share"):
        cfg.replace(lip_code_predicted_share=1.5)
    for taper in (0.0, 1.5):
        with pytest.raises(ConfigError, match="lip_kernel_taper"):
            cfg.replace(lip_kernel_taper=taper)
    with pytest.raises(ConfigError, match="lip_basis_xyz_lr_scale"):
        cfg.replace(lip_basis_xyz_lr_scale=-0.1)


def test_lip_bases_learning_rates():
    # Each lip basis learns at its attribute's rate; the position bases at lip_basis_xyz_lr_scale of it.
    from gaussiantalker.train.schedule import LearningRates

    for scale in (1.0, 0.1):
        cfg = load_config("cpu_small", lip_blendshapes=True, lip_basis_xyz_lr_scale=scale)
        for step in (0, 700):
            lrs = LearningRates(cfg, 0.3).at(step)
            assert lrs["lip_basis_xyz"] == pytest.approx(scale * lrs["xyz"]) and lrs["xyz"] > 0
            assert lrs["lip_basis_dc"] == lrs["f_dc"] and lrs["lip_basis_opacity"] == lrs["opacity"]

