"""`benchmarks/gpu_check.py --cpu-smoke` runs every stage on the CPU in under a minute, so the one command
that proves the GPU path cannot rot while no GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_check.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--skip-build",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu-smoke"
    stages = result["stages"]
    assert [s["status"] for s in stages.values()] == ["ok"] * 5, {k: s.get("error") for k, s in stages.items()}
    assert stages["build"]["rasterizer"]["cpu"] is True
    tests = stages["tests"]
    assert tests["tests"] > 10 and tests["failures"] == tests["errors"] == 0
    rows = stages["rasterizer"]["rows"]
    assert rows and all(r["ours_cpu"]["fwd_ms"] > 0 for r in rows)
    assert stages["train"]["coarse_it_per_s"] > 0 and stages["train"]["fine_it_per_s"] > 0
    assert [r["batch_size"] for r in stages["render"]["rows"]] == [1, 2]
    assert "ours CUDA fwd/bwd ms" in proc.stdout  # the printed table
    assert seconds < 60, f"the smoke run took {seconds:.0f} s"
