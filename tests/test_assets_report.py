"""``gaussiantalker assets``: every optional file is listed, found where the code that uses it looks,
with its checksum verified where one is published; files placed by the test in a temporary asset folder."""

from __future__ import annotations

import hashlib
import json

import pytest

from gaussiantalker import cli
from gaussiantalker.assets_report import REGISTRY, asset_report, format_table

REQUIRED_BY_WRAPPER = ("01_MorphableModel.mat", "epoch_20.pth", "resnet50-19c8e357.pth",
                       "shape_predictor_68_face_landmarks.dat", "s3fd-619a316812.pth")
ALSO = ("79999_iter.pth", "deepspeech-0_1_0-b90017e8.pb", "2DFAN4-11f355bf06.pth.tar", "vgg16-397923af.pth",
        "alexnet-owt-7be5be79.pth", "alex.pth", "vgg.pth", "hubert-large-ls960-ft", "exp_info.npy",
        "keys_info.npy", "topology_info.npy")


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "assets"
    folder.mkdir()
    monkeypatch.setenv("GAUSSIANTALKER_HOME", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the face-alignment files' other place
    return folder


def _by_name(report):
    return {a.name: a for a in report.assets}


def test_registry_lists_every_optional_file():
    names = {n for spec in REGISTRY for n in spec.names}
    for name in REQUIRED_BY_WRAPPER + ALSO:
        assert name in names, name
    for spec in REGISTRY:
        assert spec.enables and spec.fallback and spec.source


def test_empty_folder_reports_everything_missing(home):
    report = asset_report()
    assert report.asset_dir == home
    for a in report.assets:
        assert a.found is None and a.checksum == "-" and a.looked_in
        assert str(home) in " ".join(a.looked_in) or "torch" in " ".join(a.looked_in) or a.name.endswith(".dat")
    text = format_table(report)
    assert f"0 of {len(REGISTRY)}" in text and "missing" in text


def test_found_files_are_checked(home, tmp_path):
    good = b"the right bytes"
    digest = hashlib.sha256(good).hexdigest()
    (home / f"vgg16-{digest[:8]}.pth").write_bytes(good)  # not the registry's name: not found
    (home / "resnet50-19c8e357.pth").write_bytes(b"not resnet weights")  # name promises a hash
    (home / "3DMM").mkdir()
    (home / "3DMM" / "01_MorphableModel.mat").write_bytes(b"mat")  # one sub-folder down is found
    (home / "79999_iter.pth").write_bytes(b"bisenet")
    (home / "deepspeech-0_1_0-b90017e8.pb").write_bytes(b"not the graph")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "s3fd-619a316812.pth").write_bytes(b"s3fd")
    (home / "hubert-large-ls960-ft").mkdir()
    (home / "hubert-large-ls960-ft" / "config.json").write_text("{}")
    (home / "hubert-large-ls960-ft" / "model.safetensors").write_bytes(b"w" * 100)
    report = _by_name(asset_report())
    assert report["vgg16-397923af.pth"].found is None
    r = report["resnet50-19c8e357.pth"]
    assert r.found == home / "resnet50-19c8e357.pth" and r.checksum.startswith("MISMATCH") and not r.ok
    assert r.sha256 == hashlib.sha256(b"not resnet weights").hexdigest() and r.size == 18
    bfm = report["01_MorphableModel.mat"]
    assert bfm.found == home / "3DMM" / "01_MorphableModel.mat" and bfm.checksum.startswith("unknown") and bfm.ok
    assert report["79999_iter.pth"].sha256 == hashlib.sha256(b"bisenet").hexdigest()
    ds = report["deepspeech-0_1_0-b90017e8.pb"]
    assert ds.checksum.startswith("MISMATCH (SHA-1") and hashlib.sha1(b"not the graph").hexdigest() in ds.checksum
    s3fd = report["s3fd-619a316812.pth"]
    assert s3fd.found == hub / "s3fd-619a316812.pth" and s3fd.checksum.startswith("MISMATCH")
    hub_model = report["hubert-large-ls960-ft"]
    assert hub_model.found == home / "hubert-large-ls960-ft" and hub_model.size == 100
    assert not report["epoch_20.pth"].used


def test_hash_prefix_verified(home):
    """A file whose SHA-256 starts with the prefix in its torch-hub style name is reported ok."""
    blob = b"alexnet"
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    name = f"alexnet-owt-{prefix}.pth"
    (home / name).write_bytes(blob)
    from gaussiantalker.assets_report import AssetSpec, _check

    spec = AssetSpec((name,), "x", "y", "z")
    assert _check(spec, home / name, hashlib.sha256(blob).hexdigest()).startswith("ok")


def test_cli_assets_json_and_table(home, capsys):
    (home / "vgg.pth").write_bytes(b"lin")
    assert cli.main(["assets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["asset_dir"] == str(home)
    by = {a["name"]: a for a in data["assets"]}
    assert by["vgg.pth"]["found"] == str(home / "vgg.pth")
    assert by["vgg.pth"]["sha256"] == hashlib.sha256(b"lin").hexdigest()
    assert by["alex.pth"]["found"] is None and by["alex.pth"]["fallback"]
    other = home.parent / "other"
    other.mkdir()
    (other / "alex.pth").write_bytes(b"a")
    assert cli.main(["assets", "--dir", str(other)]) == 0
    out = capsys.readouterr().out
    assert str(other) in out and "found   alex.pth" in out and "1 of" in out
    assert cli.main(["--assets", str(other), "assets", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["asset_dir"] == str(other)
