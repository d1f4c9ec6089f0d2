"""benchmarks/gpu_check.py: every check importable; without a GPU it says so, reports every check skipped with why, runs
nothing and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_every_check_is_a_function():
    assert len(gpu_check.CHECKS) >= 9 and all(callable(f) for f in gpu_check.CHECKS.values())
    for name in ("check_extract_bf16", "check_extract_fp16", "check_int8", "check_int4", "check_finetune_bf16",
                 "check_finetune_fp16", "check_deepspeed", "check_faiss_gpu", "check_vllm"):
        assert getattr(gpu_check, name) in gpu_check.CHECKS.values()


@pytest.mark.skipif(gpu_check.cuda(), reason="this machine has a CUDA GPU: the check would run for real")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "g.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "no CUDA GPU" in p.stdout
    record = json.loads(out.read_text())
    assert record["gpu"] is None
    # every GPU check is reported, skipped, with the reason
    assert [r["path"] for r in record["checks"]] == list(gpu_check.CHECKS)
    for r in record["checks"]:
        assert r["status"] == "skipped" and r["detail"].startswith("no CUDA GPU on this machine"), r
        assert r["path"] in p.stdout
