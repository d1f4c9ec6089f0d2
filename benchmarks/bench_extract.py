"""Frozen extraction throughput on all ml-100k titles, side by side in one run.

* tcf (hf backend, length-sorted batches) vs sentence-transformers ``encode`` (batch 32)
  on the same model and texts, with the cosine of every vector to sentence-transformers';
* vs a batch-size-1 fp32 loop padded to 30 tokens, like the TCF reference code's default;
* achieved GFLOP/s against this machine's fp32 matmul rate;
* peak memory of layer-range loading (only the blocks below a layer) vs the whole model.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_extract.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch


def matmul_gflops(n: int = 1024, repeat: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9


def titles() -> list[str]:
    from tcf.data import ensure_dataset

    return ensure_dataset("ml-100k").item_texts()[1:]


def bench_tcf(model: str, texts: list[str], batch: int, max_tokens: int):
    from tcf.encoders import EncoderSpec, build_encoder

    enc = build_encoder(EncoderSpec(model=model, batch_size=batch, max_tokens=max_tokens))
    enc.embed(texts[:64])  # warm-up
    t = time.perf_counter()
    out = enc.embed(texts)
    dt = time.perf_counter() - t
    return out, dt, enc


def bench_batch1_padded(enc, texts: list[str], pad_to: int = 30, limit: int = 300) -> float:
    """The reference code's default: one text at a time, padded to a fixed length, fp32."""
    tok, model = enc.tokenizer, enc.model
    sub = texts[:limit]
    t = time.perf_counter()
    with torch.inference_mode():
        for text in sub:
            x = tok([text], padding="max_length", truncation=True, max_length=pad_to, return_tensors="pt")
            h = model(**x).last_hidden_state
            m = x["attention_mask"].unsqueeze(-1).float()
            (h * m).sum(1) / m.sum(1)
    return len(sub) / (time.perf_counter() - t)


def bench_st(texts: list[str], batch: int = 32):
    from sentence_transformers import SentenceTransformer

    from tcf.encoders.zoo import resolve

    st = SentenceTransformer(str(resolve("minilm-l6").folder), device="cpu")
    st.encode(texts[:64], batch_size=batch)
    t = time.perf_counter()
    v = st.encode(texts, batch_size=batch, convert_to_numpy=True, normalize_embeddings=False)
    return v, time.perf_counter() - t


def flops_per_token(enc) -> float:
    """2 x parameters in the blocks (embedding lookups are not matmuls); attention terms are small for titles."""
    emb = enc.model.get_input_embeddings().weight.numel()
    return 2.0 * (enc.n_parameters - emb)


MEMORY_CHILD = """
import json, resource, sys, time
from tcf.encoders import EncoderSpec, build_encoder
from tcf.data import ensure_dataset
texts = ensure_dataset("ml-100k").item_texts()[1:]
t = time.perf_counter()
enc = build_encoder(EncoderSpec(model=sys.argv[1], layer=int(sys.argv[2]), max_tokens=32))
out = enc.embed(texts[:256])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "params": enc.n_parameters,
                  "layer": enc.layer_index, "of": enc.num_layers, "seconds": time.perf_counter() - t}))
"""


def memory(model: str, layer: int) -> dict:
    r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, model, str(layer)], capture_output=True, text=True,
                       check=True, env={**os.environ})
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["minilm-l6", "smollm2-135m"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--memory-models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    texts = titles()
    peak = matmul_gflops()
    print(f"{len(texts)} ml-100k titles; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 matmul (1024^3) {peak:.1f} GFLOP/s\n")
    rows = []
    for model in args.models:
        out, dt, enc = bench_tcf(model, texts, args.batch, args.max_tokens)
        ips = len(texts) / dt
        gflops = flops_per_token(enc) * out.n_tokens / dt / 1e9
        b1 = bench_batch1_padded(enc, texts)
        row = {"model": model, "params": enc.n_parameters, "tcf_items_s": ips, "tcf_tokens_s": out.n_tokens / dt,
               "gflops": gflops, "batch1_items_s": b1}
        if model == "minilm-l6":
            ref, st_dt = bench_st(texts)
            a, b = out.vectors, ref
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            row.update(st_items_s=len(texts) / st_dt, min_cos=float(cos.min()))
        rows.append(row)
        del enc

    print("| model | params | tcf items/s | tokens/s | sentence-transformers items/s | tcf / ST | "
          "batch-1 padded-30 items/s | tcf / batch-1 | min cos to ST | GFLOP/s (% of matmul) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        st = f"{r['st_items_s']:,.0f}" if "st_items_s" in r else "-"
        ratio = f"{r['tcf_items_s'] / r['st_items_s']:.2f}x" if "st_items_s" in r else "-"
        cos = f"{r['min_cos']:.6f}" if "min_cos" in r else "-"
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['tcf_items_s']:,.0f} | {r['tcf_tokens_s']:,.0f} | {st} | "
              f"{ratio} | {r['batch1_items_s']:,.0f} | {r['tcf_items_s'] / r['batch1_items_s']:.1f}x | {cos} | "
              f"{r['gflops']:.1f} ({100 * r['gflops'] / peak:.0f}%) |")

    if args.memory_models:
        from tcf.encoders.zoo import ZOO, resolve

        for model in args.memory_models:  # GGUF conversion happens once, outside the measurement
            if model in ZOO:
                resolve(model)
        print("\n| model | layer | blocks built | parameters | peak RSS (MB) | load + 256 titles (s) |")
        print("|---|---:|---:|---:|---:|---:|")
        for model in args.memory_models:
            for layer in (-1, "half"):
                if layer == "half":
                    from tcf.encoders import EncoderSpec
                    from tcf.encoders.hf import describe

                    layer = describe(EncoderSpec(model=model))[3] // 2
                m = memory(model, layer)
                print(f"| {model} | {m['layer']} of {m['of']} | {min(m['of'], m['layer'])} | "
                      f"{m['params'] / 1e6:.1f}M | {m['rss_mb']:,.0f} | {m['seconds']:.1f} |")


if __name__ == "__main__":
    main()
