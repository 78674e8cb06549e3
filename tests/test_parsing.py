"""Face parsing: colour codes on disk, the landmark geometry, BiSeNet's checkpoint layout, real frames.

The real-frame tests need ``mediapipe==0.10.21`` and the clips in ``../shared/data`` (skipped with the
reason otherwise); MediaPipe is imported once per module (~15 s with TensorFlow installed).
"""

import importlib.util
import subprocess

import cv2
import numpy as np
import pytest
import torch

from gaussiantalker.media import ffmpeg_exe
from gaussiantalker.preprocess.bisenet import CLASS_TO_LABEL, BiSeNet, CheckpointError, classes_to_labels
from gaussiantalker.preprocess.parsing import (
    BACKGROUND,
    HEAD,
    NECK,
    TORSO,
    BiSeNetParser,
    HeadGeometry,
    ParsingError,
    colors_to_labels,
    labels_to_colors,
    make_parser,
    read_parsing,
    split_person,
    write_parsing,
)

needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="mediapipe is not installed (pip install mediapipe==0.10.21)")

# ----------------------------------------------------------------------------------------- colours


def _blocks(h=48, w=64) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    lab[4:30, 16:48] = HEAD
    lab[30:38, 26:38] = NECK
    lab[38:, 4:60] = TORSO
    return lab


def test_colour_codes_are_the_originals_and_round_trip(tmp_path):
    assert [tuple(c) for c in labels_to_colors(np.array([[0, 1, 2, 3]], np.uint8))[0]] == [
        (255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0)]  # RGB: white, blue, green, red
    lab = np.random.default_rng(0).integers(0, 4, (40, 50)).astype(np.uint8)
    np.testing.assert_array_equal(colors_to_labels(labels_to_colors(lab)), lab)
    path = write_parsing(tmp_path / "parsing" / "0.png", lab)
    assert sorted(p.name for p in path.parent.iterdir()) == ["0.png"]  # atomic: no temporary left
    np.testing.assert_array_equal(read_parsing(path), lab)
    # on disk (read as BGR by OpenCV, as the original's readers do) head is the triple (255, 0, 0)
    bgr = cv2.imread(str(path))
    assert tuple(bgr[lab == HEAD][0]) == (255, 0, 0) and tuple(bgr[lab == TORSO][0]) == (0, 0, 255)
    with pytest.raises(ValueError, match="0..3"):
        labels_to_colors(np.full((2, 2), 7, np.uint8))


def test_reads_legacy_parsing_maps_with_noise(tmp_path):
    lab = _blocks()
    # the original builds a BGR-interpreted array: bg (255,255,255), head (255,0,0), neck (0,255,0), torso (0,0,255)
    triples = np.array([(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)], np.int16)
    noisy = triples[lab] + np.random.default_rng(1).integers(-40, 41, lab.shape + (3,))
    cv2.imwrite(str(tmp_path / "1.png"), np.clip(noisy, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(read_parsing(tmp_path / "1.png"), lab)
    cv2.imwrite(str(tmp_path / "2.jpg"), triples[lab].astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert (read_parsing(tmp_path / "2.jpg") == lab).mean() > 0.99
    # any colour: the nearest of the four codes (brute force over all of them)
    anything = np.random.default_rng(2).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    codes = labels_to_colors(np.arange(4, dtype=np.uint8)[None])[0].astype(np.int64)  # [4, 3]
    nearest = ((anything[:, :, None, :].astype(np.int64) - codes) ** 2).sum(axis=3).argmin(axis=2)
    np.testing.assert_array_equal(colors_to_labels(anything), nearest)


def test_read_parsing_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_parsing(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ParsingError, match="text.png"):
        read_parsing(tmp_path / "text.png")
    cv2.imwrite(str(tmp_path / "grey.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(ParsingError, match="grey.png.*one-channel"):
        read_parsing(tmp_path / "grey.png")


# ----------------------------------------------------------------------------------------- geometry


def _template_landmarks(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """68 iBUG points of an upright synthetic face: eye level ``cy``, half width ``rx``, chin at ``cy + ry``."""
    t = np.pi - np.arange(17) * np.pi / 16
    jaw = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    brows = np.stack([cx + np.linspace(-0.8, 0.8, 10) * rx, np.full(10, cy - 0.25 * ry)], axis=1)
    nose = np.stack([np.full(4, cx), cy + np.linspace(-0.1, 0.35, 4) * ry], axis=1)
    nose_base = np.stack([cx + np.linspace(-0.2, 0.2, 5) * rx, np.full(5, cy + 0.4 * ry)], axis=1)
    eye = np.stack([np.cos(np.linspace(0, 2 * np.pi, 6, endpoint=False)) * 0.15 * rx,
                    np.sin(np.linspace(0, 2 * np.pi, 6, endpoint=False)) * 0.05 * ry], axis=1)
    eyes = np.concatenate([eye + (cx - 0.45 * rx, cy), eye + (cx + 0.45 * rx, cy)])
    a = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    lips = np.stack([cx + 0.4 * rx * np.cos(a), cy + 0.65 * ry + 0.12 * ry * np.sin(a)], axis=1)
    a = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    inner = np.stack([cx + 0.3 * rx * np.cos(a), cy + 0.65 * ry + 0.04 * ry * np.sin(a)], axis=1)
    pts = np.concatenate([jaw, brows, nose, nose_base, eyes, lips, inner])
    assert pts.shape == (68, 2)
    return pts


def _synthetic_person(h=256, w=256, angle_deg=0.0):
    """A person mask (head disk, neck, shoulders), its landmarks and colours, optionally rolled."""
    cx, cy, rx, ry = 128.0, 100.0, 40.0, 55.0
    pts = _template_landmarks(cx, cy, rx, ry)
    yy, xx = np.mgrid[0:h, 0:w]
    head = (xx - cx) ** 2 + (yy - (cy - 10)) ** 2 <= 60 ** 2
    neck = (np.abs(xx - cx) <= 24) & (yy >= cy) & (yy <= cy + ry + 40)
    torso = (yy >= cy + ry + 35) & (np.abs(xx - cx) <= 110)
    person = head | neck | torso
    rgb = np.full((h, w, 3), 128, np.uint8)
    rgb[person] = (40, 50, 120)  # dark blue cloth
    rgb[head | neck] = (225, 170, 140)  # skin
    if angle_deg:
        m = cv2.getRotationMatrix2D((cx, cy + ry), angle_deg, 1.0)
        def warp(img, flag):
            return cv2.warpAffine(img, m, (w, h), flags=flag)

        person = warp(person.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
        rgb = warp(rgb, cv2.INTER_NEAREST)
        pts = pts @ m[:, :2].T + m[:, 2]
    return person, pts, rgb


def _at(labels, x, y):
    return int(labels[round(y), round(x)])


@pytest.mark.parametrize("angle", [0.0, 20.0])
def test_split_person_geometry(angle):
    person, pts, rgb = _synthetic_person(angle_deg=angle)
    labels = split_person(person, pts, rgb=rgb)
    assert labels.dtype == np.uint8 and labels.shape == person.shape
    assert set(np.unique(labels)) == {BACKGROUND, HEAD, NECK, TORSO}
    far = cv2.dilate(person.astype(np.uint8), np.ones((7, 7), np.uint8)) == 0  # > 3 px from the person
    assert (labels[far] == BACKGROUND).all() and (labels[~person] != BACKGROUND).mean() < 0.01
    assert all(_at(labels, x, y) == HEAD for x, y in pts[17:])  # brows, eyes, nose, mouth
    chin, up = pts[8], (pts[17:27].mean(0) - pts[8]) / np.linalg.norm(pts[17:27].mean(0) - pts[8])
    assert _at(labels, *(chin + 60 * up)) == HEAD
    assert _at(labels, *(chin + 115 * up)) == HEAD  # top of the head (hair)
    assert _at(labels, *(chin - 15 * up)) == NECK  # under the chin
    assert _at(labels, *(chin - 60 * up)) == TORSO  # cloth inside the neck band
    right = np.array([-up[1], up[0]])
    assert _at(labels, *(chin - 70 * up - 80 * right)) == TORSO == _at(labels, *(chin - 70 * up + 80 * right))
    assert labels[3, 3] == BACKGROUND and labels[3, -4] == BACKGROUND
    # without colours the whole band down to neck_length·d is neck
    plain = split_person(person, pts)
    d = np.linalg.norm(pts[17:27].mean(0) - pts[8])
    assert _at(plain, *(chin - 0.6 * d * up)) == NECK


def test_split_person_is_deterministic_and_stable_under_small_motion():
    person, pts, rgb = _synthetic_person()
    a = split_person(person, pts, rgb=rgb)
    np.testing.assert_array_equal(a, split_person(person, pts, rgb=rgb))
    bgr_view = rgb[:, :, ::-1].copy()[:, :, ::-1]  # same colours, negative strides
    np.testing.assert_array_equal(a, split_person(person, pts, rgb=bgr_view))
    shift = np.random.default_rng(2).normal(0, 0.5, pts.shape)  # landmark jitter of half a pixel
    b = split_person(person, pts + shift, rgb=rgb)
    assert (a != b).mean() < 0.01


def test_split_person_errors():
    person, pts, _ = _synthetic_person()
    with pytest.raises(ValueError, match="68, 2"):
        split_person(person, pts[:60])
    bad = pts.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        split_person(person, bad)
    with pytest.raises(ValueError, match="person"):
        split_person(person[None], pts)
    assert HeadGeometry().neck_length > 0
    # a face half out of the frame still parses; a person not touching the face is not kept
    labels = split_person(person, pts + (0, -140))
    assert labels.shape == person.shape and (labels == HEAD).any()
    assert not (split_person(person, pts + (-120, 0)) == TORSO).any()


# ----------------------------------------------------------------------------------------- BiSeNet


def test_class_mapping_follows_the_reference():
    expected = {0: BACKGROUND, 14: NECK, 15: NECK, 16: TORSO, 17: HEAD, 18: HEAD}
    expected.update({c: HEAD for c in range(1, 14)})
    assert [int(CLASS_TO_LABEL[c]) for c in range(19)] == [expected[c] for c in range(19)]
    np.testing.assert_array_equal(classes_to_labels(np.array([[0, 7, 14], [16, 17, 15]])), [[0, 1, 2], [3, 1, 2]])


def test_bisenet_loads_a_checkpoint_in_the_original_layout(tmp_path):
    torch.manual_seed(0)
    net = BiSeNet().eval()
    state = net.state_dict()
    # names and shapes of the face-parsing.PyTorch checkpoint (79999_iter.pth, ~13.3 M parameters)
    shapes = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7), "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
        "cp.resnet.layer4.0.downsample.0.weight": (512, 256, 1, 1), "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv_atten.weight": (128, 128, 1, 1), "cp.arm32.bn_atten.running_var": (128,),
        "cp.conv_head32.conv.weight": (128, 128, 3, 3), "cp.conv_head16.bn.bias": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1), "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1), "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3), "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv_out.weight": (19, 64, 1, 1), "conv_out32.conv.conv.weight": (64, 128, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert 13.2e6 < sum(v.numel() for k, v in state.items() if "num_batches" not in k) < 13.4e6
    # saved like the original (no ``num_batches_tracked`` in old PyTorch), found in the asset folder
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "79999_iter.pth")
    parser = make_parser("auto", assets=tmp_path)
    assert isinstance(parser, BiSeNetParser) and parser.name == "bisenet"
    for name, p in net.state_dict().items():
        torch.testing.assert_close(parser.model.state_dict()[name], p, rtol=0, atol=0)
    rgb = np.random.default_rng(3).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    assert parser.input_size == 512  # the original's network input
    # the same network straight from torch (at a 128 x 128 input, to keep the test fast): the parser's
    # labels are its argmax mapped through the class table, resized back to the frame
    small = BiSeNetParser(tmp_path / "79999_iter.pth", input_size=128)
    labels = small(rgb, None)
    assert labels.shape == (96, 80) and labels.dtype == np.uint8 and labels.max() <= TORSO
    with torch.no_grad():
        x = torch.nn.functional.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255,
                                            size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        cls = net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).argmax(1, keepdim=True).float()
        cls = torch.nn.functional.interpolate(cls, size=(96, 80), mode="nearest")[0, 0].long().numpy()
    assert len(np.unique(cls)) > 1
    np.testing.assert_array_equal(labels, CLASS_TO_LABEL[cls])
    batched = list(small.parse_many([rgb, rgb[::-1].copy()], [None, None], batch_size=2))
    assert len(batched) == 2
    np.testing.assert_array_equal(batched[0], CLASS_TO_LABEL[cls])


def test_bisenet_rejects_wrong_checkpoints(tmp_path):
    state = BiSeNet().state_dict()
    state["cp.resnet.conv_first.weight"] = state.pop("cp.resnet.conv1.weight")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "79999_iter.pth")
    with pytest.raises(CheckpointError, match=r"79999_iter.pth.*missing: cp.resnet.conv1.weight.*unexpected"):
        make_parser("bisenet", assets=tmp_path)
    (tmp_path / "79999_iter.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="79999_iter.pth"):
        make_parser("bisenet", assets=tmp_path)
    with pytest.raises(FileNotFoundError, match="79999_iter.pth"):
        make_parser("bisenet", assets=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown parsing backend"):
        make_parser("nope")


# ----------------------------------------------------------------------------------------- real frames


@pytest.fixture(scope="module")
def real_frames(shared_data, tmp_path_factory):
    """Frames 0, 60, 120 of May_5s and frame 250 of MimicTalk, with MediaPipe landmarks."""
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed (pip install mediapipe==0.10.21)")
    from gaussiantalker.preprocess.landmarks import detect_landmarks

    out = tmp_path_factory.mktemp("frames")
    items = []
    for clip, picks in (("Real3DPortrait__May_5s", (0, 60, 120)), ("MimicTalk__German_20s", (250,))):
        select = "+".join(f"eq(n\\,{i})" for i in picks)
        pattern = out / f"{clip}_%d.png"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(shared_data / "clips" / f"{clip}.mp4"),
                        "-vf", f"select={select}", "-fps_mode", "passthrough", str(pattern)], check=True)
        for k in range(1, len(picks) + 1):
            rgb = cv2.imread(str(out / f"{clip}_{k}.png"))[:, :, ::-1].copy()
            items.append((clip, rgb))
    lms = detect_landmarks(np.stack([rgb for _, rgb in items]), mode="static")
    assert lms.found.all()
    return [(clip, rgb, lms.points68[i]) for i, (clip, rgb) in enumerate(items)]


@needs_mediapipe
def test_offline_parser_on_real_frames(real_frames, tmp_path):
    parser = make_parser("auto", assets=tmp_path)  # no 79999_iter.pth there: the offline default
    assert parser.name == "mediapipe-selfie"
    results = list(parser.parse_many([rgb for _, rgb, _ in real_frames], [p for _, _, p in real_frames]))
    for (clip, rgb, pts), labels in zip(real_frames, results):
        h, w = labels.shape
        assert labels.shape == rgb.shape[:2] and set(np.unique(labels)) == {0, 1, 2, 3}, clip
        inner = [_at(labels, x, y) for x, y in pts[17:]]
        assert inner.count(HEAD) == len(inner), clip  # brows, eyes, nose, lips inside the head
        assert (labels[:24, :24] == BACKGROUND).mean() > 0.9 and (labels[:24, -24:] == BACKGROUND).mean() > 0.9
        top = pts[17:27, 1].min() - 0.3 * (pts[8, 1] - pts[17:27, 1].mean())
        assert _at(labels, pts[27, 0], top) == HEAD, clip  # hair / forehead above the brows
        assert (labels[-16:, :48] == TORSO).mean() > 0.6 and (labels[-16:, -48:] == TORSO).mean() > 0.6, clip
        chin = pts[8]
        assert _at(labels, chin[0], chin[1] + 0.06 * h) == NECK, clip  # just under the chin
        ny, nx = np.nonzero(labels == NECK)
        assert ny.min() > pts[:17, 1].min() and ny.mean() > pts[[5, 11], 1].mean(), clip  # under the jaw
        assert abs(nx.mean() - chin[0]) < 0.08 * w, clip
        if clip.startswith("MimicTalk"):  # shirt and tie at the bottom centre are cloth
            assert (labels[-12:, w // 2 - 16: w // 2 + 16] == TORSO).mean() > 0.9
    # consecutive May frames 0 / 60 / 120 differ only where the person moved
    may = [lab for (clip, _, _), lab in zip(real_frames, results) if clip.startswith("Real3D")]
    assert all((a != b).mean() < 0.15 for a, b in zip(may, may[1:]))
    parser.close()


@pytest.mark.gpu
def test_bisenet_on_cuda_matches_cpu(tmp_path):
    torch.manual_seed(0)
    torch.save(BiSeNet().state_dict(), tmp_path / "79999_iter.pth")
    rgb = np.random.default_rng(4).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    cpu = BiSeNetParser(tmp_path / "79999_iter.pth", device="cpu", input_size=128)(rgb, None)
    gpu = BiSeNetParser(tmp_path / "79999_iter.pth", device="cuda", input_size=128)(rgb, None)
    assert (cpu == gpu).mean() > 0.99  # argmax ties may flip under different kernels
