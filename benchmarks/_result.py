"""What every benchmark script writes: a description of the machine it ran on, and its JSON result."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def machine(**extra) -> dict:
    """Platform, CPU count, torch threads, 1-minute load average and the CUDA device (None without one)."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, **extra}


def write_result(out, name: str, **fields) -> Path:
    """``{"benchmark": name, "time": UTC now, "machine": machine(), **fields}`` as JSON at ``out``; prints where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
              **fields}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {out}")
    return out
