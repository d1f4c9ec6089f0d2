"""Every packaged model x pooling x precision on CPU: does it run, how close is it to fp32, how fast.

Embeds the first N ml-100k titles with each combination and prints a table with the
minimum cosine to the same model's fp32 vectors and items/s.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/matrix_extract.py --n 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tcf.data import ensure_dataset
from tcf.encoders import EncoderSpec, build_encoder

PRECISIONS = [{"dtype": "fp32"}, {"dtype": "bf16"}, {"quantization": "int8"}, {"quantization": "int4"}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["minilm-l6", "smollm2-135m", "gemma3-270m"])
    p.add_argument("--n", type=int, default=256)
    args = p.parse_args()
    texts = ensure_dataset("ml-100k").item_texts()[1:args.n + 1]
    print(f"{len(texts)} ml-100k titles, max_tokens 32\n")
    print("| model | precision | pooling | min cos to fp32 | items/s | load (s) |")
    print("|---|---|---|---:|---:|---:|")
    for model in args.models:
        ref: dict[str, np.ndarray] = {}  # fp32 vectors per pooling (fp32 runs first)
        for precision in PRECISIONS:
            name = precision.get("quantization") or precision["dtype"]
            for pooling in ("mean", "last", "cls"):
                spec = EncoderSpec(model=model, pooling=pooling, max_tokens=32, **precision)
                t = time.perf_counter()
                enc = build_encoder(spec)
                load = time.perf_counter() - t
                t = time.perf_counter()
                v = enc.embed(texts).vectors
                ips = len(texts) / (time.perf_counter() - t)
                r = ref.setdefault(pooling, v)
                cos = (r * v).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(v, axis=1)
                print(f"| {model} | {name} | {pooling} | {cos.min():.4f} | {ips:,.0f} | {load:.1f} |", flush=True)
                del enc


if __name__ == "__main__":
    main()
