"""The ``phonetic`` feature kind: MFCC rows + the articulation of the phone PocketSphinx recognises (real decoder,
real speech from espeak-ng)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from _audio_helpers import speech_like

from gaussiantalker.audio import StreamingFeatures, extract_features, feature_filename, load_audio
from gaussiantalker.audio.features import energy_column, get_extractor
from gaussiantalker.audio.mfcc import mfcc_rows
from gaussiantalker.audio.phonetic import ARTICULATION, ARTICULATION_NAMES, DIM, PHONES, articulation_rows

pytest.importorskip("pocketsphinx", reason="pocketsphinx (a core dependency) is not installed")

JAW, CLOSED, TEETH, ROUNDED, VOWEL, SILENCE = range(26, 32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """Three seconds of real (synthetic) speech with bilabials and open vowels, spoken by espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it)")
    path = tmp_path_factory.mktemp("speech") / "papa.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), "Papa, mama, a big bad map."],
                   check=True, capture_output=True)
    return load_audio(path)


def test_articulation_table():
    assert len(PHONES) == 39 and DIM == 26 + len(ARTICULATION_NAMES) == 32
    assert ARTICULATION["AA"][0] == 1.0 and ARTICULATION["IY"][0] == pytest.approx(1 / 3)
    assert ARTICULATION["M"][:2] == (0.0, 1.0) and ARTICULATION["F"][2] == 1.0 and ARTICULATION["UW"][3] == 1.0
    assert ARTICULATION["SIL"] == (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    # rows read PocketSphinx frame 2k; frames no segment covers and unknown labels (noise) are silence
    rows = articulation_rows([("AA", 0, 3), ("+NSN+", 4, 5), ("M", 8, 9)], 6)
    np.testing.assert_array_equal(rows[:, 0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(rows[:, 1], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(rows[:, 5], [0.0, 0.0, 1.0, 1.0, 0.0, 1.0])


def test_rows_are_the_mfcc_rows_plus_the_recognised_articulation(speech):
    rows = get_extractor("phonetic").rows(speech)
    assert rows.shape == (mfcc_rows(speech).shape[0], DIM) and rows.dtype == np.float32
    np.testing.assert_allclose(rows[:, :26], mfcc_rows(speech), rtol=1e-6, atol=1e-6)
    art = rows[:, 26:]
    assert set(np.unique(art[:, [CLOSED - 26, VOWEL - 26, SILENCE - 26]])) <= {0.0, 1.0}
    # what the speech holds: open vowels, lip closures (p, b, m), and silence before and after
    assert (art[:, 0] == 1.0).sum() >= 5, "no open vowel recognised in 'papa, mama, a big bad map'"
    assert art[:, 1].sum() >= 3, "no bilabial closure recognised in 'papa, mama, a big bad map'"
    assert art[:3, 5].all() and art[-3:, 5].all()
    # most of the loud rows are phones (espeak-ng's formant speech is recognised less well than a real voice:
    # ~60 % here, 97 % on a real clip)
    loud = rows[:, 0] > np.percentile(rows[:, 0], 50)
    assert (art[loud, 5] == 0).mean() > 0.5
    assert energy_column("phonetic") == energy_column("mfcc") == 0 and energy_column("hubert") is None


def test_rows_do_not_depend_on_what_was_decoded_before(speech):
    ext = get_extractor("phonetic")
    first = ext.rows(speech)
    ext.rows(speech_like(2.0, seed=3))  # a decoder keeps state from utterance to utterance: each block gets its own
    np.testing.assert_array_equal(ext.rows(speech), first)


def test_digital_silence_is_silence():
    rows = get_extractor("phonetic").rows(np.zeros(32000, np.float32))
    np.testing.assert_array_equal(rows[:, 26:], np.tile(ARTICULATION["SIL"], (rows.shape[0], 1)))


@pytest.mark.parametrize("sizes", [[320], [1, 7, 0, 5000, 319], list(np.random.default_rng(0).integers(0, 3000, 40))])
def test_streaming_equals_offline(speech, sizes):
    offline = extract_features(speech, kind="phonetic").windows
    stream = StreamingFeatures("phonetic")
    parts, i, k = [], 0, 0
    while i < speech.size:
        n = int(sizes[k % len(sizes)])
        parts.append(stream.push(speech[i: i + n]))
        i, k = i + n, k + 1
    parts.append(stream.finish())
    np.testing.assert_array_equal(np.concatenate(parts), offline)
    assert stream.lookahead_s < 1.7  # a block of 1 s, 0.5 s of its future, the window's 0.14 s


def test_dataset_file_name():
    assert feature_filename("phonetic") == "aud_phonetic.npy"


def test_utterance_norm_moves_only_the_mfcc_values(speech):
    """``Talker.audio_norm = "utterance"`` brings another voice's MFCC statistics to the training clip's; the
    articulation values (which phone it is) stay as recognised."""
    from types import SimpleNamespace

    import torch

    from gaussiantalker.audio.windows import speech_statistics
    from gaussiantalker.infer import Talker

    talker = Talker.__new__(Talker)  # only what features() reads: the extractor, the kind and the stored statistics
    talker._extractor, talker.audio_kind, talker.audio_norm = get_extractor("phonetic"), "phonetic", "utterance"
    talker.model = SimpleNamespace(audio_mean=torch.full((DIM,), 0.5), audio_std=torch.full((DIM,), 2.0))
    raw = extract_features(speech, kind="phonetic").windows
    moved = talker.features(speech)
    np.testing.assert_array_equal(moved[..., 26:], raw[..., 26:])
    mean, std = speech_statistics(moved[..., :26], 0)
    np.testing.assert_allclose(mean, 0.5, atol=1e-4)
    np.testing.assert_allclose(std, 2.0, rtol=1e-4)


def test_a_phonetic_dataset_file_of_the_wrong_width_is_named(tmp_path):
    from gaussiantalker.data import DatasetError, TalkingHeadData
    from gaussiantalker.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "ph", num_frames=24, size=32, num_points=100, audio_kind="phonetic")
    assert TalkingHeadData.open(data).audio.shape[-1] == DIM
    np.save(data / "aud_phonetic.npy", np.zeros((24, 16, 26), np.float32))  # mfcc rows under the phonetic name
    with pytest.raises(DatasetError, match=r"aud_phonetic\.npy: phonetic windows have D=32, this file has D=26"):
        TalkingHeadData.open(data)
