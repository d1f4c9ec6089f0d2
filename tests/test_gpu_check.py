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
                 "check_finetune_fp16", "check_deepspeed", "check_faiss_gpu", "check_vllm", "check_resume"):
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


def test_the_planner_memory_check_runs_its_step_on_cpu(tmp_path):
    """The check's forward runs here (bf16 on the CPU, the same call as on CUDA); what it can compare here is the
    planner's count on the meta device against the bytes autograd saved in the real step."""
    import tinymodels

    folder = tinymodels.build("opt", tmp_path / "opt", layers=4, hidden=64)
    row = gpu_check.planner_vs_step(str(folder), "cpu", items=16, tokens=8)
    assert row["hidden"] == 64 and "retained" not in row
    # measured 1.30x here (d=64, 16 x 8, bf16 on the CPU; which saved tensors differ was not examined); on the H200
    # the same count was 0.98x of a real sdpa step (benchmarks/README.md): this test checks the check's plumbing
    assert 0.7 <= row["estimate"] / row["hooks"] <= 1.5, row


def test_the_resume_check_cuts_and_resumes_a_run_here(tmp_path, tiny_model):
    """The check's cut-and-resume runs on the CPU as it would on CUDA (where the GPU's random state is what it tests):
    a run cut after its first epoch and resumed equals the run straight through."""
    ctx = gpu_check.Context.__new__(gpu_check.Context)
    from tcf.data import prepare

    ctx.work, ctx.model = tmp_path, str(tiny_model)
    ctx.dataset = prepare("synthetic", None, tmp_path / "synth", source_options={"n_users": 30, "n_items": 40,
                                                                                "n_topics": 4, "min_len": 3, "max_len": 6})
    row = gpu_check.check_resume(ctx, device="cpu")
    assert row["value"] == 0.0, row
