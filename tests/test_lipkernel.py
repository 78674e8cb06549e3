"""The kernel audio -> lip-code predictor: fit, Nystroem approximation, saving and loading, old models."""

from __future__ import annotations

import pytest
import torch

from gaussiantalker.config import load_config
from gaussiantalker.model.lipkernel import (
    ALIGN_MARGIN,
    CENTRE_WINDOW,
    SHIFTS,
    TEMPORAL_SIGMA,
    WINDOWS,
    KernelLipPredictor,
    choose_shift,
    input_weights,
    measure_audio_shift,
)
from gaussiantalker.model.talker import GaussianTalkerModel

D, K = 5, 3


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio windows whose centre window determines the codes through a smooth non-linear map (plus noise in
    the other windows, which the predictor must ignore)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(n, 8, 16, D, generator=g)
    centre = audio[:, CENTRE_WINDOW]
    energy = centre[..., 0].mean(1)  # [n]
    codes = torch.stack([torch.tanh(2 * energy), energy ** 2, torch.sin(3 * centre[..., 1].mean(1))], 1)
    return audio, codes


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_fit_predicts_unseen_windows():
    audio, codes = _data(600)
    pred = KernelLipPredictor(D, K)
    assert not pred.fitted
    assert torch.equal(pred(audio[:4]), torch.zeros(4, K))  # unfitted: the (zero) mean code
    pred.fit(audio[:500], codes[:500], ridge=0.1)
    assert pred.fitted and pred.centres.shape == (500, len(WINDOWS) * 16 * D)
    out = pred(audio[500:])
    assert out.shape == (100, K) and out.dtype == torch.float32
    assert _r(out[:, 0], codes[500:, 0]) > 0.6  # tanh of the centre's energy: learnt from 500 examples
    # Windows other than the frame's own and the next one do not matter.
    moved = audio[500:].clone()
    moved[:, 0] += 5.0
    assert torch.allclose(pred(moved), out)


def test_nystroem_approximates_the_exact_fit():
    audio, codes = _data(400, seed=1)
    exact = KernelLipPredictor(D, K).fit(audio[:300], codes[:300], ridge=0.3)
    approx = KernelLipPredictor(D, K).fit(audio[:300], codes[:300], ridge=0.3, max_centres=150,
                                         generator=torch.Generator().manual_seed(0))
    assert approx.centres.shape[0] == 150
    a, b = exact(audio[300:]), approx(audio[300:])
    assert _r(a[:, 0], b[:, 0]) > 0.8  # half the centres, on random 160-d inputs (the hardest case)


def test_state_dict_round_trip_resizes_the_buffers():
    audio, codes = _data(120)
    fitted = KernelLipPredictor(D, K).fit(audio, codes)
    fresh = KernelLipPredictor(D, K)
    fresh.load_state_dict(fitted.state_dict(), strict=True)
    assert fresh.centres.shape == (120, len(WINDOWS) * 16 * D)
    assert torch.equal(fresh(audio[:7]), fitted(audio[:7]))
    # The first kernel models read the frame's own window only and saved no ``windows`` entry.
    old = {k: v for k, v in fitted.state_dict().items() if k not in ("windows", "feat_weight")}
    f = 16 * D
    old.update(feat_mean=old["feat_mean"][:f], feat_std=old["feat_std"][:f], centres=old["centres"][:, :f])
    legacy = KernelLipPredictor(D, K)
    legacy.load_state_dict(old, strict=True)
    assert legacy.windows.tolist() == [CENTRE_WINDOW] and legacy(audio[:3]).shape == (3, K)


def test_input_weights():
    w = input_weights(26).reshape(16, 26)
    assert torch.all(w == w[:, :1])  # every feature of a row alike
    row = w[:, 0]
    # Centred; in the squared distance the edge rows weigh under 5 % of the centre's.
    assert torch.allclose(row, row.flip(0)) and row[7] == row.max() and row[0] ** 2 < 0.05 * row[7] ** 2
    t = 7.5
    assert float(row[0] / row[7]) == pytest.approx(float(torch.exp(torch.tensor(-0.25 * (t**2 - 0.25) / TEMPORAL_SIGMA**2))), rel=1e-5)


def test_input_weights_taper_the_features():
    plain = input_weights(26).reshape(16, 26)
    w = input_weights(26, taper=0.3).reshape(16, 26)
    # Each row keeps its weight in time; feature c is weighed from 1 (c0) down to 0.3 (c25), linearly.
    assert torch.allclose(w[:, 0], plain[:, 0]) and torch.allclose(w[:, -1], 0.3 * plain[:, 0])
    ratio = w / plain
    assert torch.allclose(ratio, ratio[:1].expand(16, 26))
    steps = ratio[0].diff()
    assert torch.all(steps < 0) and torch.allclose(steps, steps[:1].expand(25), atol=1e-6)


def test_zero_weighted_inputs_are_ignored_and_weights_are_saved():
    audio, codes = _data(200, seed=2)
    weights = input_weights(D).reshape(16, D).clone()
    weights[:, 3:] = 0.0  # features 3 and 4 left out
    pred = KernelLipPredictor(D, K).fit(audio[:150], codes[:150], weights=weights.reshape(-1))
    out = pred(audio[150:])
    moved = audio[150:].clone()
    moved[..., 3:] += torch.randn(moved[..., 3:].shape)  # what the zero weights leave out
    assert torch.allclose(pred(moved), out, atol=1e-6)
    moved[..., 0] += 1.0  # what they keep
    assert not torch.allclose(pred(moved), out, atol=1e-3)
    # A row at the window's edge weighs less than the centre row: changing it changes the prediction less.
    edge, mid = audio[150:].clone(), audio[150:].clone()
    edge[:, WINDOWS[0], 0, 0] += 2.0
    mid[:, WINDOWS[0], 8, 0] += 2.0
    assert (pred(edge) - out).abs().mean() < 0.1 * (pred(mid) - out).abs().mean()
    fresh = KernelLipPredictor(D, K)
    fresh.load_state_dict(pred.state_dict(), strict=True)
    assert torch.equal(fresh(audio[150:]), out)
    # Models fitted before the weights existed weighed every input 1 (and the kernel scale was the input count).
    plain = KernelLipPredictor(D, K).fit(audio[:150], codes[:150])
    old = {k: v for k, v in plain.state_dict().items() if k != "feat_weight"}
    legacy = KernelLipPredictor(D, K)
    legacy.load_state_dict(old, strict=True)
    assert torch.all(legacy.feat_weight == 1) and torch.equal(legacy(audio[150:]), plain(audio[150:]))


def test_far_from_the_training_windows_the_prediction_is_the_prior():
    audio, codes = _data(100, seed=3)
    far = audio[:5] + 50.0
    plain = KernelLipPredictor(D, K).fit(audio, codes)
    assert torch.allclose(plain(far), codes.mean(0).expand(5, -1), atol=1e-5)  # default prior: the codes' mean
    prior = torch.tensor([0.5, -1.0, 2.0])
    pred = KernelLipPredictor(D, K).fit(audio, codes, prior=prior)
    assert torch.allclose(pred(far), prior.expand(5, -1), atol=1e-5)
    assert _r(pred(audio)[:, 0], codes[:, 0]) > 0.9  # near its training windows it still fits the codes


def test_bad_input_is_named():
    pred = KernelLipPredictor(D, K)
    audio, codes = _data(10)
    with pytest.raises(ValueError, match="codes must have shape"):
        pred.fit(audio, codes[:, :2])
    with pytest.raises(ValueError, match="ridge"):
        pred.fit(audio, codes, ridge=0.0)
    with pytest.raises(ValueError, match="weights must be"):
        pred.fit(audio, codes, weights=torch.ones(7))
    with pytest.raises(ValueError, match="weights must be"):
        pred.fit(audio, codes, weights=torch.zeros(16 * D))
    with pytest.raises(ValueError, match="audio must have shape"):
        pred(audio[:, :4])


def test_cpu_small_uses_the_kernel_and_old_network_models_still_load():
    cfg = load_config("cpu_small", kplanes_config={"output_coordinate_dim": 16, "resolution": [8, 8, 8]}, d_model=32, net_width=16)
    assert cfg.hidden.lip_code_dim > 0 and cfg.hidden.lip_predictor == "kernel"
    model = GaussianTalkerModel(cfg, D, 10)
    assert model.lip_kernel and model.lip_parameters() == [] and not hasattr(model, "audio_encoder")
    # A model saved before the kernel predictor: network predictor keys in its state, no lip_predictor in config.
    old_cfg = load_config("cpu_small", kplanes_config={"output_coordinate_dim": 16, "resolution": [8, 8, 8]}, d_model=32, net_width=16, lip_predictor="network")
    old_state = GaussianTalkerModel(old_cfg, D, 10).state_dict()
    cfg2 = load_config("cpu_small", kplanes_config={"output_coordinate_dim": 16, "resolution": [8, 8, 8]}, d_model=32, net_width=16)
    GaussianTalkerModel.adapt_config(cfg2, old_state)
    assert cfg2.hidden.lip_predictor == "network"
    GaussianTalkerModel(cfg2, D, 10).load_state_dict(old_state, strict=True)
    # A kernel model's own state stays a kernel model.
    cfg3 = load_config("cpu_small", kplanes_config={"output_coordinate_dim": 16, "resolution": [8, 8, 8]}, d_model=32, net_width=16)
    GaussianTalkerModel.adapt_config(cfg3, model.state_dict())
    assert cfg3.hidden.lip_predictor == "kernel"



def _sequence(n: int, late: int, seed: int = 4, mix: tuple[float, ...] = (1.0, 1.0)
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A clip of ``n`` frames whose sound comes ``late`` frames after its picture: the mouth of frame ``k`` is made by
    the sound of windows ``k + late``, ``k + late + 1``, ... (weighed by ``mix``). ``(windows [n, 16, D],
    codes [n, K], opening [n])``."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(n, 16, D, generator=g)
    energy = seq[..., 0].mean(1)
    made = torch.zeros(n)
    for k in range(n):
        made[k] = sum(w * energy[min(max(k + late + j, 0), n - 1)] for j, w in enumerate(mix))
    codes = torch.stack([torch.tanh(2 * made), made ** 2, 0.1 * torch.randn(n, generator=g)], 1)
    return seq, codes, codes[:, 0].clone()


@pytest.mark.parametrize("late", [0, 2, -3, 6])
def test_measure_audio_shift_finds_how_late_the_sound_is(late):
    audio, codes, opening = _sequence(400, late)
    shift, scores = measure_audio_shift(audio, codes, opening, weights=input_weights(D))
    assert tuple(scores) == SHIFTS and shift == late
    assert scores[late] > 0.5 and scores[late] > scores[0] + 0.2 if late else scores[0] == max(scores.values())
    # A frame left without an opening (no face tracked) is not scored; too few frames: no measure, shift 0.
    opening[::7] = float("nan")
    assert measure_audio_shift(audio, codes, opening, weights=input_weights(D))[0] == late
    assert measure_audio_shift(audio[:60], codes[:60], opening[:60]) == (0, {})


def test_a_shift_must_beat_the_unshifted_windows_clearly():
    # The mouth made mostly by window k + 1 and a little by k + 2: the pair shifted by one frame (k + 1, k + 2) reads
    # it a little better than the unshifted pair (k, k + 1), but not by the margin: the audio stays unshifted.
    audio, codes, opening = _sequence(400, 1, mix=(1.0, 0.1))
    shift, scores = measure_audio_shift(audio, codes, opening, weights=input_weights(D))
    assert scores[0] > 0.5 and 0 < scores[1] - scores[0] < ALIGN_MARGIN and shift == 0
    # Made by windows k + 1 and k + 2, the same sound one frame late is clearly better read shifted.
    assert measure_audio_shift(*_sequence(400, 1), weights=input_weights(D))[0] == 1


def test_a_shift_must_win_in_the_folds_not_just_on_average():
    base = [0.5, 0.4, 0.45, 0.55, 0.5]
    steady = {0: base, -2: [r + 0.08 for r in base], 1: [r - 0.1 for r in base]}
    assert choose_shift(steady) == -2
    # The best mean, but from erratic folds, loses to a steady gain (the German clip with its sound 120 ms early:
    # -3 gained 0.085 with a standard error of 0.053, -2 as much with 0.035).
    wobbly = [0.3, -0.1, 0.25, -0.05, 0.05]
    steady[-3] = [r + g for r, g in zip(base, wobbly)]
    assert choose_shift(steady) == -2
    # The same mean gain (0.08) from two folds that gain a lot while three lose: not an offset, noise (a 6 s clip).
    erratic = {0: base, -2: [base[0] + 0.5, base[1] - 0.1, base[2] + 0.3, base[3] - 0.1, base[4] - 0.2]}
    assert choose_shift(erratic) == 0
    # Consistent but small: below the margin.
    assert choose_shift({0: base, 1: [r + 0.02 for r in base]}) == 0
    # A fold where the mouth does not move (NaN r) is left out; fewer than 3 usable folds: no shift.
    nan = float("nan")
    assert choose_shift({0: [nan] + base[1:], 2: [nan] + [r + 0.1 for r in base[1:]]}) == 2
    assert choose_shift({0: [nan, nan, nan, 0.4, 0.5], 2: [nan, nan, nan, 0.9, 0.9]}) == 0


def test_the_clip_shift_is_saved_and_old_models_have_none():
    audio, codes = _data(60)
    fitted = KernelLipPredictor(D, K).fit(audio, codes)
    fitted.clip_shift.fill_(-2)
    fresh = KernelLipPredictor(D, K)
    fresh.load_state_dict(fitted.state_dict(), strict=True)
    assert int(fresh.clip_shift) == -2
    # Models saved before the alignment have no clip_shift: their clip was read as it is.
    old = {k: v for k, v in fitted.state_dict().items() if k != "clip_shift"}
    legacy = KernelLipPredictor(D, K)
    legacy.clip_shift.fill_(5)
    legacy.load_state_dict(old, strict=True)
    assert int(legacy.clip_shift) == 0
