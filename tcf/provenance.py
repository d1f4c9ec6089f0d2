"""Where a result came from: package versions, git revision, hardware."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
from pathlib import Path

PACKAGES = ("tcf", "torch", "transformers", "numpy", "pandas", "faiss-cpu", "faiss-gpu", "peft", "accelerate",
            "bitsandbytes", "deepspeed", "vllm", "sentence-transformers")


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_revision(path: str | Path | None = None) -> str | None:
    here = Path(path or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return None


def hardware() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor() or _cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        try:
            info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            from tcf.models.precision import native_low_precision

            info["native_bf16_matmul"] = native_low_precision(torch.bfloat16)  # False: bf16 linears emulated
        except Exception:  # noqa: BLE001 - an older torch without these calls: provenance must not fail
            pass
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


_PEAK_RESET = False  # whether reset_peak_rss() has restarted the kernel's count in this process


def reset_peak_rss() -> bool:
    """Start this process's peak-memory count afresh, at a run's start: a sweep runs many runs in one process,
    and the lifetime peak would give each run the largest of those before it. Linux resets the high-water
    mark (VmHWM) on writing 5 to /proc/self/clear_refs; False where that is not possible (the lifetime peak
    is then what :func:`peak_rss_mb` reads)."""
    global _PEAK_RESET, _START_RSS
    import gc

    gc.collect()  # what earlier runs of this process left: freed, and handed back to the OS where glibc can
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _PEAK_RESET = True
    _START_RSS = _status_mb("VmRSS:")
    return True


_START_RSS: float | None = None


def start_rss_mb() -> float | None:
    """Resident memory at the last reset: what the process already held when the run began (the kernel's
    reset starts the peak from there, so a run's peak includes it)."""
    return _START_RSS


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory() -> dict:
    """A run record's memory timings: ``peak_rss_mb``, ``peak_rss_scope`` (``run``: since this run's
    :func:`reset_peak_rss`; ``process``: the process's whole life) and ``start_rss_mb`` (see there)."""
    return {"peak_rss_mb": peak_rss_mb(), "peak_rss_scope": "run" if _PEAK_RESET else "process",
            "start_rss_mb": start_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: since the last :func:`reset_peak_rss` (VmHWM) where one
    succeeded, else over the process's life (ru_maxrss; Linux reports KiB)."""
    if _PEAK_RESET:
        hwm = _status_mb("VmHWM:")
        if hwm is not None:
            return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def provenance() -> dict:
    return {"packages": package_versions(), "git": git_revision(), "hardware": hardware()}
