"""Data-parallel training on gloo (CPU): 2 ranks train the model 1 rank trains, resume across world sizes, a
killed rank is reported; the helpers that split work and parse device lists."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time

import numpy as np
import pytest
import torch
from _dist_helpers import die_on_rank_1, free_port, hash_rank, main_first_rank, rank_main
from test_train import tiny

from gaussiantalker.distributed import Comm, DistributedError, batch_part, launch, parse_devices, rank_device, shard, tensor_hash
from gaussiantalker.synthetic import make_synthetic_dataset
from gaussiantalker.train import train
from gaussiantalker.train.checkpoint import list_checkpoints
from gaussiantalker.train.strategy import DensifyStrategy

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")

# Both stages, densification due every 3 iterations in both and pruning in the fine stage (so the 2 ranks must agree on every
# clone / split / prune), a fine batch of 5 (uneven: 3 + 2 rows) and the coarse stage's 1 (rank 1 renders nothing).
CFG = dict(coarse_iterations=6, iterations=9, checkpoint_every=6, batch_size=5, densify_from_iter=1,
           densification_interval=3, pruning_from_iter=1, pruning_interval=3, split_gs_in_fine_stage=True,
           densify_grad_threshold_coarse=1e-7, densify_grad_threshold_fine_init=1e-7, opacity_threshold_coarse=0.3,
           opacity_threshold_fine_init=0.5, hash_check_every=3)
FINAL = 15


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One workspace: ``one`` (1 process), ``two`` (2 ranks through the launcher: ``gt.train(device=["CPU", "CPU"])``)."""
    root = tmp_path_factory.mktemp("dist")
    dataset = make_synthetic_dataset(root / "data" / "synth", num_frames=24, size=32, num_points=300)
    cfg = tiny(**CFG)
    edits = {"densify": 0, "prune": 0}
    densify, prune = DensifyStrategy._densify, DensifyStrategy._prune

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            changed = fn(*args, **kwargs)
            edits[kind] += int(changed)
            return changed
        return wrapper

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DensifyStrategy, "_densify", counted("densify", densify))
            mp.setattr(DensifyStrategy, "_prune", counted("prune", prune))
            train(dataset, config=cfg, device="CPU", workspace=root, name="one", progress=False)
    finally:
        torch.set_num_threads(threads)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        start = time.perf_counter()
        import gaussiantalker as gt  # the public verb with a device list

        model = gt.train(dataset, config=cfg, device=["CPU", "CPU"], workspace=root, name="two", progress=False)
        seconds = time.perf_counter() - start
    return {"root": root, "dataset": dataset, "cfg": cfg, "edits": edits, "two": model, "seconds": seconds}


def _ckpt(root, name, k=FINAL):
    return torch.load(root / "output" / name / "checkpoints" / f"chkpnt_{k}.pth", weights_only=True)


def _assert_close_runs(a: dict, b: dict) -> None:
    """Same Gaussians (count identical), parameters within float rounding (Adam amplifies rounding where a gradient
    is ~0: up to a few learning rates), Adam's moments of the big tensors within 1e-3 relative."""
    assert a["model"]["xyz"].shape == b["model"]["xyz"].shape
    for key, x in a["model"].items():
        y = b["model"][key]
        assert x.shape == y.shape, key
        if x.dtype.is_floating_point:
            assert torch.allclose(x, y, rtol=0, atol=2e-3), (key, float((x - y).abs().max()))
        else:
            assert torch.equal(x, y), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i, state in sa.items():
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = state[key], sb[i][key]
            if x.numel() >= 256:  # the per-Gaussian tensors and the tri-plane grids
                rel = float((x - y).norm() / x.norm().clamp_min(1e-30))
                assert rel < 1e-3, (i, key, rel)


def test_two_ranks_train_the_model_one_rank_trains(runs):
    assert runs["edits"]["densify"] >= 1 and runs["edits"]["prune"] >= 1  # both happened (in the 1-rank run)
    root = runs["root"]
    assert list_checkpoints(root / "output" / "two") == list_checkpoints(root / "output" / "one") == [6, 12, 15]
    a, b = _ckpt(root, "one"), _ckpt(root, "two")
    _assert_close_runs(a, b)
    assert b["world_size"] == 2 and len(b["rng_ranks"]) == 2
    assert runs["two"].metrics["psnr"] == pytest.approx(json.loads(
        (root / "output" / "one" / "metrics.json").read_text())["metrics"]["psnr"], abs=0.05)
    # rank 0 alone wrote the log: the lines of the 1-rank run, not twice as many
    logs = [[json.loads(line)["iteration"] for line in (root / "output" / name / "train_log.jsonl").read_text()
             .splitlines()] for name in ("one", "two")]
    assert logs[0] == logs[1] and len(logs[1]) == len(set(logs[1]))


def test_two_ranks_train_with_predicted_lip_codes_as_one_rank(tmp_path, monkeypatch):
    """cpu_small's lip code with half of the fine-stage frames on their out-of-fold predicted codes: every rank
    fits the folds, rank 0's codes are broadcast (a collective every rank must reach: rank 1 renders nothing in
    the coarse stage), each rank takes its rows of the global picks; the result is the 1-rank run's, and the
    ranks stay identical (hash check every iteration)."""
    dataset = make_synthetic_dataset(tmp_path / "data" / "s60", num_frames=66, size=32, num_points=300)
    cfg = tiny("cpu_small", coarse_iterations=2, iterations=4, batch_size=5, resolution=-1, checkpoint_every=0,
               lip_code_predicted_share=0.5, hash_check_every=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(dataset, config=cfg, device="CPU", workspace=tmp_path, name="one", progress=False)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train(dataset, config=cfg, device="CPU,CPU", workspace=tmp_path, name="two", progress=False)
    _assert_close_runs(_ckpt(tmp_path, "one", 6), _ckpt(tmp_path, "two", 6))


def _spawn(runs, name, die_after=0, world=2):
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    kwargs = {"config": runs["cfg"], "device": "CPU", "workspace": str(runs["root"]), "name": name,
              "progress": False}
    reports = [runs["root"] / f"{name}.rank{r}.json" for r in range(world)]
    procs = [ctx.Process(target=rank_main, args=(r, world, port, str(runs["dataset"]), kwargs, str(reports[r]),
                                                 die_after if r == 1 else 0)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung"
    return [json.loads(r.read_text()) for r in reports]


def test_a_killed_rank_stops_the_other_and_the_run_resumes(runs, monkeypatch):
    """Rank 1 is SIGKILLed after checkpoint 6: rank 0 stops within a bounded time with a clear message; the
    model folder resumes with 2 ranks (= the uninterrupted 2-rank run) and with 1 rank (= the 1-rank run)."""
    monkeypatch.setenv("GAUSSIANTALKER_DIST_TIMEOUT", "30")
    root = runs["root"]
    survivor, dead = _spawn(runs, "killed", die_after=6)
    assert "died" in dead
    assert "error" in survivor, survivor
    message = survivor["error"]
    assert message.startswith("DistributedError: rank 0 of 2:") and "another rank died" in message
    assert "resumes from the newest checkpoint" in message
    assert survivor["time"] - dead["died"] < 30  # bounded: the collective timeout at most
    assert list_checkpoints(root / "output" / "killed") == [6]

    shutil.copytree(root / "output" / "killed", root / "output" / "killed1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train(runs["dataset"], device="CPU,CPU", workspace=root, name="killed", progress=False)  # same world size
    assert list_checkpoints(root / "output" / "killed") == [6, 12, 15]
    a, b = _ckpt(root, "two"), _ckpt(root, "killed")
    for key in ("progress", "model", "optimizer", "strategy"):  # bit for bit, as an uninterrupted run
        _states_equal(a[key], b[key], key)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(runs["dataset"], device="CPU", workspace=root, name="killed1", progress=False)  # another world size
    finally:
        torch.set_num_threads(threads)
    _assert_close_runs(_ckpt(root, "one"), _ckpt(root, "killed1"))


def _states_equal(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _states_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _states_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and torch.equal(a, b), path
    else:
        assert a == b, path


def test_batch_part_splits_every_row_once():
    for batch in (1, 5, 32):
        for world in (1, 2, 3, 4):
            parts = [batch_part(batch, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == batch
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1
    assert batch_part(1, 1, 2) == (1, 1)  # the coarse stage's single frame: rank 1 has none
    assert shard(list("abcde"), 1, 2) == ["b", "d"]


def test_device_lists():
    assert parse_devices("CPU") is None and parse_devices("auto") is None
    assert parse_devices("CPU,CPU") == ["CPU", "CPU"] and parse_devices(["cpu", "cpu", "cpu"]) == ["cpu"] * 3
    with pytest.raises(ValueError, match="empty entry"):
        parse_devices("CPU,")
    with pytest.raises(ValueError, match="unknown device"):
        parse_devices("CPU,banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="does not exist"):
            parse_devices("GPU0,GPU1")
    from gaussiantalker.distributed import RankInfo

    two = RankInfo(rank=1, world=2, local_rank=1, local_world=2)
    assert rank_device("CPU,CPU", two) == "CPU" and rank_device("cpu", two) == "cpu"
    with pytest.raises(ValueError, match="cannot share"):
        rank_device("GPU0", two)
    with pytest.raises(ValueError, match="one per process"):
        rank_device("CPU,CPU,CPU", two)


def test_single_process_comm_is_a_no_op_and_the_hash_sees_a_change():
    comm = Comm()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    comm.reduce_gradients([p])
    comm.barrier()
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and comm.bytes_reduced == 0
    state = {"a": torch.zeros(4), "b": torch.arange(3)}
    h = comm.check_identical(state, "start")
    assert h == tensor_hash({"b": torch.arange(3), "a": torch.zeros(4)})
    state["a"][2] = 1e-30
    assert tensor_hash(state) != h


def test_many_audio_files_are_sharded_across_ranks(tmp_path_factory, monkeypatch):
    """A folder of 3 files: 1 process and 2 ranks (``CPU,CPU``) write the same videos, one per file, named after it."""
    import gaussiantalker as gt
    from _infer_helpers import audio_model

    from gaussiantalker.audio import load_audio, write_wav
    from gaussiantalker.render.video import read_frames

    model_dir = audio_model(tmp_path_factory)
    talker = gt.load(model_dir, device="cpu")
    speech = load_audio(talker.data.path / "aud.wav")
    folder = tmp_path_factory.mktemp("replies")
    for i, (name, seconds) in enumerate((("alpha", 0.6), ("beta", 0.4), ("gamma", 0.5))):
        start = int(i * 0.3 * 16000)
        write_wav(folder / f"{name}.wav", speech[start:start + int(seconds * 16000)])
    (folder / "notes.txt").write_text("not audio")

    one = gt.render(talker, folder, device="cpu", progress=False)
    assert [r.path for r in one] == [model_dir / "renders" / f"{n}.mp4" for n in ("alpha", "beta", "gamma")]
    assert [r.frames for r in one] == [15, 10, 12]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path_factory.mktemp("sharded")
    two = gt.render(model_dir, [folder / "alpha.wav", folder / "beta.wav", folder / "gamma.wav"], out=out,
                    device="CPU,CPU", progress=False)
    assert [r.path for r in two] == [out / f"{n}.mp4" for n in ("alpha", "beta", "gamma")]
    assert [r.frames for r in two] == [15, 10, 12]
    for a, b in zip(one, two):
        x, y = np.stack(list(read_frames(a.path))).astype(int), np.stack(list(read_frames(b.path))).astype(int)
        assert x.shape == y.shape and np.abs(x - y).max() <= 2, a.path.name
    with pytest.raises(ValueError, match="same name"):
        gt.render(talker, [folder / "alpha.wav", folder / "alpha.wav"], device="cpu", progress=False)


def _two_ranks(target, *args, tmp_path) -> list[dict]:
    """Run ``target(rank, 2, port, *args, report)`` in 2 spawned processes; their JSON reports."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    reports = [tmp_path / f"r{r}.json" for r in range(2)]
    procs = [ctx.Process(target=target, args=(r, 2, port, *args, str(reports[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    return [json.loads(r.read_text()) for r in reports]


def test_rank_0_works_first_while_the_others_wait(tmp_path):
    """Preprocessing under torchrun: rank 0 does the work, the others wait and receive its result."""
    for report in _two_ranks(main_first_rank, str(tmp_path / "marker"), tmp_path=tmp_path):
        assert report == {"got": "made by rank 0", "marker_seen": True}


def test_the_hash_check_stops_every_rank_when_one_element_differs(tmp_path):
    for report in _two_ranks(hash_rank, tmp_path=tmp_path):
        assert report["error"] and report["error"].startswith("the ranks diverged at global iteration 200")
        assert "rank 0:" in report["error"] and "rank 1:" in report["error"]


def test_the_launcher_reports_a_killed_rank_and_stops_the_others():
    start = time.perf_counter()
    with pytest.raises(DistributedError, match=r"rank 1 \(pid \d+\): killed by SIGKILL.*other ranks were stopped"):
        launch(die_on_rank_1, ["CPU", "CPU"])
    assert time.perf_counter() - start < 60  # rank 0 would sleep 120 s


def test_frame_dropout_masks_do_not_depend_on_the_batch_a_frame_is_in():
    from gaussiantalker.model.networks import FrameDropout, frame_dropout

    drop = FrameDropout(0.3).train()
    x = torch.ones(3, 50, 8)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    with frame_dropout(gens([11, 12, 13])):
        together = drop(x)
    with frame_dropout(gens([12])):
        alone = drop(x[:1])
    assert torch.equal(together[1], alone[0]) and not torch.equal(together[0], together[1])
    assert 0.6 < float((together > 0).float().mean()) < 0.8 and float(together.max()) == pytest.approx(1 / 0.7)
    with pytest.raises(ValueError, match="2 generators"):
        with frame_dropout(gens([1, 2])):
            drop(x)
    drop.eval()
    with frame_dropout(gens([1, 2, 3])):
        assert torch.equal(drop(x), x)
