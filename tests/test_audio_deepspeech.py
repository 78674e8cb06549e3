"""The deepspeech kind: the original's preprocessing, the graph checks, and TensorFlow safety.

No DeepSpeech graph is available offline, so the tests freeze a small graph with DeepSpeech 0.1.0's
interface (tensor names, shapes, time-major logits) and the real loader runs it. TensorFlow is only
ever imported through the library's safe path in this process (a direct ``import tensorflow`` would
make any later ``import torchvision`` in the pytest process segfault); the import-order cases run in
fresh interpreters.
"""

from __future__ import annotations

import logging
import shutil
import textwrap

import numpy as np
import pytest
from _audio_helpers import (
    build_tiny_deepspeech_graph,
    original_deepspeech_windows,
    run_python,
    shared_files,
    speech_like,
    tensorflow,
)

from gaussiantalker.audio import (
    DeepSpeechGraphError,
    StreamingFeatures,
    extract_features,
    load_audio,
    save_features,
    write_wav,
)
from gaussiantalker.audio.deepspeech import GRAPH_FILENAME, GRAPH_SHA1, deepspeech_input

# --------------------------------------------------------------------------------------------------
# no TensorFlow needed


def test_input_vector_is_the_reference_computation():
    from python_speech_features import mfcc

    audio = speech_like(1.53, seed=11)
    x = deepspeech_input(audio)
    signal = (audio.astype(np.float64) * 32768.0).astype(np.int16)
    feats = mfcc(signal, samplerate=16000, numcep=26)[::2]
    padded = np.concatenate([np.zeros((9, 26)), feats, np.zeros((9, 26))])
    ref = np.stack([padded[t : t + 19].reshape(-1) for t in range(len(feats))])
    ref = (ref - ref.mean()) / ref.std()
    assert x.shape == (len(feats), 494) and x.dtype == np.float32
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)


def test_missing_graph_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"place {GRAPH_FILENAME} .* in {tmp_path}"):
        extract_features(speech_like(0.5), kind="deepspeech", assets=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pb does not exist"):
        extract_features(speech_like(0.5), kind="deepspeech", model_path=tmp_path / "nope.pb")


def test_wrong_sha1_is_refused_for_the_original_name(tmp_path):
    (tmp_path / GRAPH_FILENAME).write_bytes(b"\x08\x01" * 1000)
    pattern = rf"{GRAPH_FILENAME} has SHA-1 [0-9a-f]{{40}}, but .* has {GRAPH_SHA1}"
    with pytest.raises(DeepSpeechGraphError, match=pattern):
        extract_features(speech_like(0.5), kind="deepspeech", assets=tmp_path)
    with pytest.raises(DeepSpeechGraphError, match=pattern):
        extract_features(speech_like(0.5), kind="deepspeech", model_path=tmp_path / GRAPH_FILENAME)


def test_missing_tensorflow_says_what_to_install(tmp_path):
    graph = tmp_path / "some_graph.pb"
    graph.write_bytes(b"")
    code = _script(
        """
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        import gaussiantalker.audio as gta
        try:
            gta.extract_features(np.zeros(8000, np.float32), kind="deepspeech", model_path=GRAPH)
        except ImportError as exc:
            print("IMPORT_ERROR", exc)
        """,
        tmp_path / "unused.wav", graph, tmp_path / "unused.npy",
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORT_ERROR DeepSpeech features need TensorFlow" in proc.stdout
    assert "pip install gaussiantalker[deepspeech]" in proc.stdout


# --------------------------------------------------------------------------------------------------
# with the tiny graph


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    tensorflow()  # skips when TensorFlow is absent
    return build_tiny_deepspeech_graph(tmp_path_factory.mktemp("ds") / "tiny_deepspeech.pb")


@pytest.mark.parametrize("seconds", [2.0, 2.37, 1.01])
def test_windows_match_direct_tensorflow_computation(tiny_graph, seconds):
    audio = speech_like(seconds, seed=12)
    feats = extract_features(audio, kind="deepspeech", model_path=tiny_graph)
    original = original_deepspeech_windows(audio, tiny_graph)  # [M, 16, 29]
    assert feats.kind == "deepspeech" and feats.dim == 29
    assert feats.num_frames == round(seconds * 25)
    # The original makes ceil((round(d*50) - 1) / 2) windows; ours round(d*25): equal but for odd
    # round(d*50) in the upper half, where ours has one more (whose rows are the same zero padding).
    assert feats.num_frames - original.shape[0] in (0, 1)
    common = min(feats.num_frames, original.shape[0])
    np.testing.assert_allclose(feats.windows[:common], original[:common], rtol=1e-5, atol=1e-5)
    assert np.abs(feats.windows).max() > 0.1


def test_real_speech_file_and_dataset_name(tiny_graph, tmp_path):
    files = [p for p in shared_files("audio", "*.wav") if p.name == "SadTalker__RD_Radio31_000.wav"]
    if not files:
        pytest.skip("SadTalker__RD_Radio31_000.wav absent")
    feats = extract_features(files[0], kind="deepspeech", model_path=tiny_graph)
    original = original_deepspeech_windows(load_audio(files[0]), tiny_graph)
    assert feats.windows.shape == original.shape == (200, 16, 29)
    np.testing.assert_allclose(feats.windows, original, rtol=1e-5, atol=1e-5)
    assert save_features(feats, tmp_path).name == "aud_ds.npy"


def test_unverified_graph_is_used_with_a_warning(tiny_graph, caplog, monkeypatch):
    from gaussiantalker.audio import deepspeech as ds
    from gaussiantalker.audio import features as features_module

    # The check and the extractor are cached per process: start from a clean state.
    monkeypatch.setattr(ds, "_VERIFIED", {})
    monkeypatch.setattr(features_module, "_EXTRACTORS", {})
    with caplog.at_level(logging.WARNING, logger="gaussiantalker.audio.deepspeech"):
        feats = extract_features(speech_like(0.5), kind="deepspeech", model_path=tiny_graph)
    assert "unverified" in feats.source
    assert any("without a checksum" in r.getMessage() for r in caplog.records)


def test_graph_without_deepspeech_tensors(tmp_path):
    tensorflow()
    wrong = build_tiny_deepspeech_graph(tmp_path / "other.pb", names=("features", "lengths", "scores"))
    with pytest.raises(DeepSpeechGraphError, match=r"other\.pb is not a DeepSpeech v0.1.0 graph: tensors \["):
        extract_features(speech_like(0.5), kind="deepspeech", model_path=wrong)


def test_file_that_is_not_a_graph(tmp_path):
    tensorflow()
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff" * 100)
    with pytest.raises(DeepSpeechGraphError, match=r"junk\.pb is not a frozen TensorFlow graph"):
        extract_features(speech_like(0.5), kind="deepspeech", model_path=junk)


def test_graph_with_the_wrong_symbol_count(tmp_path):
    tensorflow()
    wide = build_tiny_deepspeech_graph(tmp_path / "wide.pb", symbols=30)
    with pytest.raises(DeepSpeechGraphError, match="30 symbols, DeepSpeech v0.1.0 has 29"):
        extract_features(speech_like(0.5), kind="deepspeech", model_path=wide)


def test_streaming_deepspeech_is_block_wise_and_says_so(tiny_graph, caplog):
    audio = speech_like(4.1, seed=13)
    offline = extract_features(audio, kind="deepspeech", model_path=tiny_graph).windows
    with caplog.at_level(logging.WARNING, logger="gaussiantalker.audio.streaming"):
        stream = StreamingFeatures("deepspeech", 25, model_path=tiny_graph)
    assert any("only approximate" in r.getMessage() for r in caplog.records)
    parts = [stream.push(audio[i : i + 320]) for i in range(0, audio.size, 320)]
    streamed = np.concatenate(parts + [stream.finish()])
    assert streamed.shape == offline.shape
    # Same features up to the per-block standardisation and context: strongly correlated, not equal.
    assert np.corrcoef(streamed.ravel(), offline.ravel())[0, 1] > 0.9
    assert stream.lookahead_s == pytest.approx((320 * 99 + 400) / 16000 + 0.14)


# --------------------------------------------------------------------------------------------------
# import order: fresh interpreters


def _script(body: str, wav, graph, out) -> str:
    head = f"import logging, sys\nimport numpy as np\nWAV, GRAPH, OUT = {str(wav)!r}, {str(graph)!r}, {str(out)!r}\n"
    return head + textwrap.dedent(body)


@pytest.fixture(scope="module")
def in_process_reference(tiny_graph, tmp_path_factory):
    folder = tmp_path_factory.mktemp("order")
    wav = write_wav(folder / "speech.wav", speech_like(1.5, seed=14))
    return wav, extract_features(wav, kind="deepspeech", model_path=tiny_graph).windows


def test_gaussiantalker_first_runs_in_process_and_keeps_torchvision_safe(tiny_graph, in_process_reference, tmp_path):
    pytest.importorskip("torchvision")
    wav, expected = in_process_reference
    out = tmp_path / "a.npy"
    code = _script(
        """
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        import gaussiantalker.audio as gta
        np.save(OUT, gta.extract_features(WAV, kind="deepspeech", model_path=GRAPH).windows)
        order = list(sys.modules)
        assert order.index("torchvision") < order.index("tensorflow"), "torchvision must come first"
        import tensorflow as tf
        print("VISIBLE_GPUS", len(tf.config.get_visible_devices("GPU")))
        import torchvision  # already imported before tensorflow: safe
        print("DONE")
        """,
        wav, tiny_graph, out,
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "runs in this process" in proc.stderr
    assert "VISIBLE_GPUS 0" in proc.stdout and "DONE" in proc.stdout
    np.testing.assert_array_equal(np.load(out), expected)


def test_tensorflow_first_runs_in_a_worker_and_never_imports_torchvision(tiny_graph, in_process_reference, tmp_path):
    wav, expected = in_process_reference
    out = tmp_path / "b.npy"
    code = _script(
        """
        import tensorflow  # the caller's choice, before gaussiantalker: the crash-prone order
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        import gaussiantalker.audio as gta
        np.save(OUT, gta.extract_features(WAV, kind="deepspeech", model_path=GRAPH).windows)
        stream = gta.StreamingFeatures("deepspeech", 25, model_path=GRAPH)
        audio = gta.load_audio(WAV)
        n = sum(len(stream.push(audio[i:i + 3200])) for i in range(0, audio.size, 3200)) + len(stream.finish())
        print("STREAMED", n)
        print("TORCHVISION_LOADED", "torchvision" in sys.modules)
        """,
        wav, tiny_graph, out,
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "runs in a worker process: tensorflow was imported before gaussiantalker" in proc.stderr
    assert "TORCHVISION_LOADED False" in proc.stdout
    assert f"STREAMED {expected.shape[0]}" in proc.stdout
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6, atol=1e-6)


def test_caller_imported_torchvision_then_tensorflow_runs_in_process(tiny_graph, tmp_path):
    pytest.importorskip("torchvision")
    code = _script(
        """
        import torchvision, tensorflow as tf  # the safe order, chosen by the caller
        from gaussiantalker.audio._tf_graph import placement
        where, why = placement()
        print("PLACEMENT", where)
        print("VISIBLE_GPUS", len(tf.config.get_visible_devices("GPU")))
        """,
        tmp_path / "unused.wav", tiny_graph, tmp_path / "unused.npy",
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PLACEMENT in_process" in proc.stdout and "VISIBLE_GPUS 0" in proc.stdout


def test_worker_reports_a_bad_graph(tmp_path):
    tensorflow()
    wrong = build_tiny_deepspeech_graph(tmp_path / "other.pb", names=("a", "b", "c"))
    shutil.copy(wrong, tmp_path / "copy.pb")
    code = _script(
        """
        import tensorflow
        import gaussiantalker.audio as gta
        try:
            gta.extract_features(np.zeros(8000, np.float32) + 0.01, kind="deepspeech", model_path=GRAPH)
        except gta.DeepSpeechGraphError as exc:
            print("GRAPH_ERROR", exc)
        """,
        tmp_path / "unused.wav", tmp_path / "copy.pb", tmp_path / "unused.npy",
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GRAPH_ERROR" in proc.stdout and "copy.pb is not a DeepSpeech v0.1.0 graph" in proc.stdout
