"""What a benchmark records about the machine it ran on, so its figures can be compared later."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def machine_info(*packages: str) -> dict:
    """CPU model, cores, load, GPU, Python and the versions of `packages` (distribution names)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in ("numpy", *packages):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "gpu": _gpu_name(),
        # Above the core count means other work shared the CPU while the benchmark ran.
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        **versions,
    }


def _gpu_name() -> str:
    try:  # nvidia-smi is present wherever a usable NVIDIA GPU is; torch need not be imported
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "none"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "none"
