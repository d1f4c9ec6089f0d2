"""The deepspeed backend on CPU: init_inference (no kernel injection) and ZeRO-3 partitioning, one process.

Multi-GPU tensor parallelism and multi-process ZeRO-3 need GPUs and are not run here.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")

CHILD = """
import sys, json
import numpy as np
from tcf.encoders import EncoderSpec, build_encoder
texts = ["Toy Story", "GoldenEye", "star wars", "a very long title that keeps going"]
folder, stage, layer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = build_encoder(EncoderSpec(model=folder, backend="deepspeed", zero_stage=stage, layer=layer, max_tokens=12))
hf = build_encoder(EncoderSpec(model=folder, layer=layer, max_tokens=12))
a, b = ds.embed(texts).vectors, hf.embed(texts).vectors
partitioned = any(getattr(p, "ds_status", None) is not None for p in ds.model.parameters())
print(json.dumps({"maxdiff": float(np.abs(a - b).max()), "params": ds.n_parameters, "hf_params": hf.n_parameters,
                  "partitioned": partitioned, "runner": type(ds.runner).__name__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage, layer", [(0, -1), (3, -1), (3, 2)])
def test_deepspeed_matches_hf_on_cpu(tiny_model, stage, layer):
    # a fresh process: DeepSpeed sets up a process group and global state
    r = subprocess.run([sys.executable, "-c", CHILD, str(tiny_model), str(stage), str(layer)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["maxdiff"] < 1e-5
    assert out["params"] == out["hf_params"]
    assert out["runner"] == ("InferenceEngine" if stage == 0 else "DeepSpeedEngine")
    assert out["partitioned"] == (stage == 3)


def test_deepspeed_rejects_quantization():
    from tcf.encoders import EncoderSpec, build_encoder
    from tcf.errors import ConfigError

    with pytest.raises(ConfigError, match="drop quantization"):
        build_encoder(EncoderSpec(backend="deepspeed", quantization="int8"))
    with pytest.raises(ConfigError, match="zero_stage"):
        build_encoder(EncoderSpec(backend="deepspeed", zero_stage=2))
    assert np  # numpy imported for the child's sake


def test_a_process_without_a_launcher_rendezvouses_on_a_free_port(monkeypatch):
    """Two single-process DeepSpeed encoders on one machine (two pytest workers, two sweeps) once both took port
    29571, and the second failed with EADDRINUSE."""
    import os
    import socket

    from tcf.encoders.ds import _ensure_dist_env

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 29571))  # the old fixed port, held by "the other process"
        except OSError:
            pass  # something holds it already: as good
        _ensure_dist_env()
        with socket.socket() as mine:
            mine.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))  # free now: EADDRINUSE on the old code
    monkeypatch.setenv("MASTER_PORT", "1234")
    _ensure_dist_env()
    assert os.environ["MASTER_PORT"] == "1234"  # a launcher's port is kept
