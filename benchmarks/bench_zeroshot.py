"""Zero-shot benchmark: hf generation batched vs one prompt at a time, the warm-cache rerun, and prompt
tokens per protocol.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_zeroshot.py --n 8 --batch-size 8

1. Prompts/s of the ``hf`` backend on ``smollm2-135m`` (greedy, each protocol's bounded
   max_new_tokens) with ``--batch-size`` prompts per generate() call vs one at a time, on the
   same prompts (real ml-100k users, seeded), and whether both give the same replies.
2. Wall time of a ``tcf zeroshot`` run whose every reply is cached (no model is loaded).
3. Prompt tokens (chat template included) per protocol over ``--users`` users, no generation.

Prints one JSON object; load average and thread count are part of it, since CPU timings on a
shared machine mean little without them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcf.data import ensure_dataset
from tcf.run.config import load_config
from tcf.run.seqdata import SeqData
from tcf.zeroshot import GenParams, build_backend, run_zeroshot
from tcf.zeroshot.candidates import build
from tcf.zeroshot.runner import build_prompts

PROTOCOLS = ("rank", "rank-recency", "rank-icl", "choice", "topk-json")


def config(protocol: str, limit: int, cache_root: str, **z):
    sets = [f"zeroshot.protocol={protocol}", "zeroshot.n_candidates=null", f"zeroshot.limit={limit}",
            f"cache_root={cache_root}", *[f"zeroshot.{k}={v}" for k, v in z.items()]]
    return load_config("experiments/zeroshot-ml100k.yaml", sets)


def prompts_for(cfg, dataset, data):
    return build_prompts(cfg, dataset, data, build(cfg, dataset, data))


def throughput(backend, jobs, params, batch_size: int) -> tuple[float, list[str]]:
    backend.batch_size = batch_size
    t = time.perf_counter()
    replies = backend.generate([j["messages"] for j in jobs], params)
    return len(jobs) / (time.perf_counter() - t), [r.text for r in replies]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="prompts per throughput measurement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--protocols", nargs="*", default=["choice", "rank"], help="protocols timed for generation")
    ap.add_argument("--users", type=int, default=100, help="users for the token counts")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-zeroshot-")
    dataset = ensure_dataset("ml-100k")
    data = SeqData(dataset)
    out: dict = {"load_average": os.getloadavg(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                 "n_prompts": args.n, "batch_size": args.batch_size, "generation": {}}

    backend = build_backend(config("rank", args.n, tmp).zeroshot)
    out["model"] = backend.identity
    for protocol in args.protocols:
        cfg = config(protocol, args.n, tmp)
        jobs = prompts_for(cfg, dataset, data)
        params = GenParams(max_new_tokens=cfg.zeroshot.new_tokens())
        batched, a = throughput(backend, jobs, params, args.batch_size)
        single, b = throughput(backend, jobs, params, 1)
        out["generation"][protocol] = {"max_new_tokens": params.max_new_tokens, "batched_prompts_per_s": batched,
                                       "single_prompts_per_s": single, "speedup": batched / single,
                                       "same_replies": sum(x == y for x, y in zip(a, b)) / len(a)}
        print(protocol, out["generation"][protocol], file=sys.stderr)

    # warm-cache rerun: the first run fills the cache through the loaded backend, the second loads nothing
    cfg = config("choice", args.n, tmp, batch_size=args.batch_size)
    run_zeroshot(cfg, Path(tmp) / "cold", progress=False, backend=backend)
    t = time.perf_counter()
    warm = run_zeroshot(cfg, Path(tmp) / "warm", progress=False)
    out["warm_rerun"] = {"wall_seconds": time.perf_counter() - t, "calls": warm["backend"]["calls"],
                         "cache_hits": warm["backend"]["cache_hits"]}

    tokens = {}
    for protocol in PROTOCOLS:
        cfg = config(protocol, args.users, tmp)
        lengths = [len(backend.render(j["messages"])) for j in prompts_for(cfg, dataset, data)]
        tokens[protocol] = {"n_candidates": cfg.zeroshot.candidates(), "mean": float(np.mean(lengths)),
                            "max": int(np.max(lengths)), "max_new_tokens": cfg.zeroshot.new_tokens()}
    out["prompt_tokens"] = tokens
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
