"""The GPU acceptance check: every GPU path of tcf, run for real, in one command (a few minutes on an H100).

    python benchmarks/gpu_check.py [--out gpu_check.json] [--model minilm-l6] [--bundle .gpu_site]

Each check runs one path end to end on a small synthetic dataset and reports ran / skipped (the
package or the hardware is missing, and why) / failed (the error), with its time, peak GPU memory
and one number that says it worked: the cosine of its vectors to fp32's (extraction, quantization,
vLLM), test NDCG@10 (fine-tuning, DeepSpeed), recall against exact search (faiss-gpu).  The table
goes to stdout and the records to ``--out`` (JSON).  On a machine without a CUDA GPU it says so,
runs nothing GPU-specific and exits 0, so it is safe in any CI.

The model is ``--model`` (default the packaged MiniLM-L6; any zoo name, folder or hub name in the
local cache); where it is not installed, a tiny OPT built from a config stands in (the paths run, the
numbers are then only plumbing checks).

On the air-gapped GPU node, what the node lacks travels as the bundle ``benchmarks/gpu_bundle.py``
prepares (wheels, tiny models, MiniLM-L6 in fp16), installed there into ``.gpu_site/``;
``--bundle .gpu_site`` (the default where that folder exists) puts its packages on the path, makes its
fp16 MiniLM the default model and its tiny OPT the stand-in, and gives the reason a package could not
travel (faiss-gpu, vLLM) in that check's skip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]
BUNDLE: dict = {}  # what --bundle found: its folder, models and the reasons packages stayed behind


def use_bundle(folder: Path) -> dict:
    """Put an installed bundle (gpu_bundle.py's parts, installed into ``folder``) on the path; what it holds."""
    site, models = folder / "site", folder / "models"
    if site.is_dir():
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
    n = manifest.get("parts", 0)
    missing = [i for i in range(1, n + 1) if not (folder / f"part{i}.ok").exists()]
    if missing:
        print(f"gpu_check: bundle {folder} lacks part(s) {missing} (the machine was not the warm one that installed"
              " them?): run their commands again; checks whose packages are missing report skipped")
    BUNDLE.clear()
    BUNDLE.update(folder=str(folder), parts=n, missing_parts=missing, not_carried=manifest.get("not_carried", {}),
                  models=sorted(p.name for p in models.iterdir()) if models.is_dir() else [])
    return BUNDLE


def bundle_model(name: str) -> Path | None:
    """A model folder the bundle brought (``minilm-l6-fp16``, ``tiny-opt``), if it did."""
    p = Path(BUNDLE.get("folder", "")) / "models" / name
    return p if BUNDLE and (p / "config.json").exists() else None


def not_carried(package: str) -> str:
    """Why the bundle could not bring ``package`` (gpu_bundle.py's manifest), or ''."""
    why = BUNDLE.get("not_carried", {}).get(package)
    return f": {why}" if why else ""


def cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class Skip(Exception):
    """A check that cannot run here (a package or a feature is missing): reported as skipped, with why."""


# ---------------------------------------------------------------- shared inputs

class Context:
    """The dataset, model and scratch folder every check shares (built once)."""

    def __init__(self, work: Path, model: str):
        from tcf.data import prepare

        self.work = work
        self.dataset = prepare("synthetic", None, work / "synth",
                               source_options={"n_users": 200, "n_items": 300, "n_topics": 6, "min_len": 4, "max_len": 12})
        self.model, self.model_note = resolve_model(model, work)
        self._fp32 = None

    def fp32_vectors(self):
        """Reference vectors: the same model in fp32 (on the GPU)."""
        if self._fp32 is None:
            self._fp32 = extract_vectors(self, "fp32")[0]
        return self._fp32


def resolve_model(name: str, work: Path) -> tuple[str, str]:
    """``name`` where it loads here (a zoo model whose package is installed, or a folder), else a tiny OPT."""
    from tcf.encoders.zoo import ZOO, require

    try:
        if name in ZOO:
            require(ZOO[name])
            return name, name
        if Path(name).exists():
            return name, name
    except Exception:  # noqa: BLE001 - not installed: the tiny model below
        pass
    tiny = bundle_model("tiny-opt")
    if tiny is not None:
        return str(tiny), f"tiny OPT (4 blocks, built from a config, from the bundle: {name} is not installed)"
    import tinymodels

    return str(tinymodels.build("opt", work / "tiny-opt", layers=4, hidden=64)), \
        f"tiny OPT (4 blocks, built from a config: {name} is not installed)"


def extract_vectors(ctx: Context, dtype: str, **spec):
    import numpy as np

    from tcf.encoders.base import EncoderSpec
    from tcf.encoders.extract import extract

    s = EncoderSpec(model=ctx.model, dtype=dtype, device="cuda", max_tokens=32, batch_size=64, **spec)
    r = extract(ctx.dataset, s, root=ctx.work / "cache")
    return np.asarray(r.entry.vectors, dtype=np.float32), r


def cosine_to(ref, vec) -> float:
    import numpy as np

    a, b = ref[1:], vec[1:]  # row 0 is padding
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float((num / den).mean())


# ---------------------------------------------------------------- the checks (each returns its metric)

def check_extract_bf16(ctx: Context) -> dict:
    vec, r = extract_vectors(ctx, "bf16")
    return {"metric": "cosine to fp32", "value": cosine_to(ctx.fp32_vectors(), vec), "items_per_s": r.items_per_s}


def check_extract_fp16(ctx: Context) -> dict:
    vec, r = extract_vectors(ctx, "fp16")
    return {"metric": "cosine to fp32", "value": cosine_to(ctx.fp32_vectors(), vec), "items_per_s": r.items_per_s}


def _bnb():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise Skip("bitsandbytes is not installed (pip install -e '.[quant]')") from None


def check_int8(ctx: Context) -> dict:
    _bnb()
    vec, _ = extract_vectors(ctx, "fp16", quantization="int8")
    return {"metric": "cosine to fp32", "value": cosine_to(ctx.fp32_vectors(), vec)}


def check_int4(ctx: Context) -> dict:
    _bnb()
    vec, _ = extract_vectors(ctx, "fp16", quantization="int4")
    return {"metric": "cosine to fp32", "value": cosine_to(ctx.fp32_vectors(), vec)}


def _run(ctx: Context, name: str, *overrides: str, resume: bool = False, device: str = "cuda") -> dict:
    """A short tcf train run on the check's data and model: its results."""
    from tcf.experiments.config import load_config
    from tcf.train.loop import train

    cfg = load_config(None, [f"data.dataset={ctx.dataset.path}", f"encoder.model={ctx.model}", "encoder.max_tokens=32",
                             f"cache_root={ctx.work / 'cache'}", "model.dim=64", "model.max_len=10",
                             f"train.device={device}", "train.epochs=2", "train.batch_size=32", "train.loss=inbatch",
                             "eval.bootstrap=0", f"name={name}", *overrides])
    return train(cfg, ctx.work / "runs" / name, resume=resume, progress=False)


def _train(ctx: Context, name: str, *overrides: str) -> dict:
    r = _run(ctx, name, *overrides)
    return {"metric": "test ndcg@10", "value": r["metrics"]["test"]["metrics"]["ndcg@10"]["mean"]}


class _Cut(Exception):
    """The stand-in for a run killed after its first epoch's checkpoint."""


def check_resume(ctx: Context, device: str = "cuda") -> dict:
    """A fine-tuned bf16 run with dropout, cut after its first epoch and resumed from last.pt, against the same run
    straight through: dropout draws from the GPU's generator, whose state must come back from the checkpoint
    (loaded onto the GPU), and the losses must agree (up to the GPU's non-deterministic kernels)."""
    import tcf.train.loop as loop

    sets = ("model.tower=finetune", "model.finetune_layers=2", "encoder.dtype=bf16", "model.dropout=0.2",
            "train.epochs=3", "train.patience=100")
    straight = _run(ctx, "resume-straight", *sets, device=device)
    real, calls = loop.train_epoch, []

    def cut_at_the_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise _Cut
        return real(*args, **kw)

    loop.train_epoch = cut_at_the_second
    try:
        _run(ctx, "resume-cut", *sets, device=device)
    except _Cut:
        pass
    finally:
        loop.train_epoch = real
    if len(calls) != 2:
        raise AssertionError(f"the run was not cut after its first epoch ({len(calls)} epochs started)")
    resumed = _run(ctx, "resume-cut", *sets, resume=True, device=device)
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(straight["history"], resumed["history"], strict=True))
    if gap > 1e-3:
        raise AssertionError(f"resumed losses differ from the straight run's by {gap:.2e} (> 1e-3)")
    return {"metric": "max |loss difference|, resumed after epoch 1 vs straight, 3 epochs", "value": gap}


def check_finetune_bf16(ctx: Context) -> dict:
    return _train(ctx, "ft-bf16", "model.tower=finetune", "model.finetune_layers=2", "encoder.dtype=bf16")


def check_finetune_fp16(ctx: Context) -> dict:
    return _train(ctx, "ft-fp16", "model.tower=finetune", "model.finetune_layers=2", "encoder.dtype=fp16")


def check_deepspeed(ctx: Context) -> dict:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise Skip("deepspeed is not installed (DS_BUILD_OPS=0 pip install -e '.[deepspeed]')") from None
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29513"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _train(ctx, "ft-zero3", "model.tower=finetune", "model.finetune_layers=2", "encoder.dtype=bf16",
                      "train.strategy=deepspeed", "train.zero_stage=3")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def check_faiss_gpu(ctx: Context) -> dict:
    try:
        import faiss
    except ImportError:
        raise Skip("faiss is not installed") from None
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise Skip("faiss has no GPU support here (faiss-cpu): "
                   + (f"faiss-gpu is not installed{not_carried('faiss-gpu')}" if not_carried("faiss-gpu")
                      else "pip install -e '.[gpu]'"))
    import numpy as np

    x = np.ascontiguousarray(ctx.fp32_vectors()[1:])
    q = x[:64]
    cpu = faiss.IndexFlatIP(x.shape[1])
    cpu.add(x)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    _, want = cpu.search(q, 10)
    _, got = gpu.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)])
    return {"metric": "recall@10 vs CPU", "value": float(recall)}


def check_vllm(ctx: Context) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise Skip("vllm is not installed" + (not_carried("vllm") or " (pip install -e '.[vllm]')")) from None
    vec, r = extract_vectors(ctx, "bf16", backend="vllm")
    return {"metric": "cosine to fp32 (hf)", "value": cosine_to(ctx.fp32_vectors(), vec), "items_per_s": r.items_per_s}


def planner_vs_step(folder: str, device: str, items: int = 256, tokens: int = 32, k: int = 2) -> dict:
    """The planner's count of what a top-k fine-tuning forward keeps for backward (``top_saved_bytes``, on the
    meta device) against a real forward of the same blocks on ``device``, set up as the planner counts it (pure
    bf16 weights, its 4-D mask, train mode): on CUDA the bytes still allocated after it (inputs included: the
    first block saves them) and the peak during it (``torch.cuda.max_memory_allocated``); elsewhere the bytes
    autograd's saved-tensor hooks see.  Not modelled by either side: ``tcf train``'s fp32 master weights under
    autocast (which keep bf16 weight copies and fp32 norms), and its causal padding mask."""
    import torch
    from transformers import AutoConfig

    from tcf.encoders import EncoderSpec
    from tcf.encoders.pooling import l2_normalize, pool
    from tcf.experiments.planner import top_saved_bytes
    from tcf.models.top_layers import load_top_layers

    estimate = top_saved_bytes(AutoConfig.from_pretrained(folder), k, items, tokens, "bf16")
    model, kind, _, _ = load_top_layers(EncoderSpec(model=folder, dtype="bf16"), k)
    model = model.to(device=device, dtype=torch.bfloat16).train()
    hidden = int(model.config.hidden_size)
    cuda_dev = device.startswith("cuda")
    if cuda_dev:  # before the inputs exist: the first block saves them, and the planner counts them
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    states = torch.randn(items, tokens, hidden, device=device, dtype=torch.bfloat16)
    kw = {"inputs_embeds": states, "attention_mask": torch.zeros(items, 1, tokens, tokens, dtype=states.dtype,
                                                                 device=device)}
    if kind == "decoder":
        kw["position_ids"] = torch.arange(tokens, device=device).expand(items, tokens)
    mask = torch.ones(items, tokens, dtype=torch.long, device=device)
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = l2_normalize(pool(model(**kw).last_hidden_state, mask, "mean"))
    row = {"params": sum(p.numel() for p in model.parameters()), "hidden": hidden, "estimate": estimate,
           "hooks": sum(saved.values())}
    if cuda_dev:
        torch.cuda.synchronize()
        row.update(retained=torch.cuda.memory_allocated() - base - out.untyped_storage().nbytes(),
                   peak=torch.cuda.max_memory_allocated() - base)
    return row


def check_planner_memory(ctx: Context) -> dict:
    """Two widths of a 4-block OPT (the bundle's or built here): estimate / measured for each."""
    import tinymodels

    rows = []
    for hidden in (256, 768):
        folder = ctx.work / f"opt-{hidden}"
        if not (folder / "config.json").exists():
            tinymodels.build("opt", folder, layers=4, hidden=hidden)  # 4 heads, FFN 2 x hidden
        rows.append(planner_vs_step(str(folder), "cuda"))
    ratios = [r["estimate"] / r["retained"] for r in rows]
    return {"metric": "estimate / retained after forward (OPT 4 blocks, d=256 and 768, top 2, bf16, 256 x 32)",
            "value": ", ".join(f"{x:.2f}x" for x in ratios),
            "peak_ratio": ", ".join(f"{r['estimate'] / r['peak']:.2f}x" for r in rows), "rows": rows}


CHECKS: dict[str, Callable[[Context], dict]] = {
    "extract bf16": check_extract_bf16,
    "extract fp16": check_extract_fp16,
    "bitsandbytes int8": check_int8,
    "bitsandbytes int4": check_int4,
    "fine-tune top-2 bf16": check_finetune_bf16,
    "fine-tune top-2 fp16": check_finetune_fp16,
    "DeepSpeed ZeRO-3, 1 GPU": check_deepspeed,
    "resume a fine-tuned run from its checkpoint": check_resume,
    "faiss-gpu": check_faiss_gpu,
    "vLLM embeddings": check_vllm,
    "planner memory vs a real step": check_planner_memory,
}


# the package each check needs beyond the node's (reported with the skip where it is missing)
NEEDS = {"bitsandbytes int8": "bitsandbytes", "bitsandbytes int4": "bitsandbytes",
         "DeepSpeed ZeRO-3, 1 GPU": "deepspeed", "faiss-gpu": "faiss", "vLLM embeddings": "vllm"}


# ---------------------------------------------------------------- running and reporting

def skipped_without_gpu(name: str) -> dict:
    """The row of a check on a machine without a CUDA GPU: skipped, with why (and a missing package too)."""
    import importlib.util

    detail = "no CUDA GPU on this machine"
    pkg = NEEDS.get(name)
    if pkg and importlib.util.find_spec(pkg) is None:
        detail += f"; {pkg} is not installed"
    if name == "faiss-gpu" and not_carried("faiss-gpu"):
        detail += f"; faiss-gpu{not_carried('faiss-gpu')}"
    if name.startswith("vLLM") and not_carried("vllm"):
        detail += f"; vllm{not_carried('vllm')}"
    return {"path": name, "status": "skipped", "seconds": 0.0, "peak_gpu_gib": 0.0, "detail": detail}


def run_check(name: str, fn: Callable[[Context], dict], ctx: Context) -> dict:
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        out = fn(ctx)
        status, detail = "ran", ""
    except Skip as e:
        out, status, detail = {}, "skipped", str(e)
    except Exception as e:  # noqa: BLE001 - a failed path is a row of the table, not the end of the check
        out, status, detail = {}, "failed", f"{type(e).__name__}: {e}".splitlines()[0][:300]
        traceback.print_exc()
    return {"path": name, "status": status, "seconds": round(time.perf_counter() - t0, 2),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 3), **out, "detail": detail}


def table(rows: list[dict]) -> str:
    lines = [f"{'path':<26} {'status':<8} {'time':>7} {'GPU mem':>9}  result"]
    for r in rows:
        result = f"{r['metric']} {r['value']:.4f}" if "value" in r else r["detail"]
        lines.append(f"{r['path']:<26} {r['status']:<8} {r['seconds']:>6.1f}s {r['peak_gpu_gib']:>7.2f}G  {result}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json", help="where the records go (JSON)")
    p.add_argument("--model", default=None,
                   help="the encoder the checks use (default: the bundle's fp16 MiniLM-L6 where --bundle has it, "
                        "else minilm-l6; a tiny OPT where not installed)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="an installed gpu_bundle.py bundle (default: .gpu_site in the repository, where it exists)")
    p.add_argument("--only", nargs="*", help="run only these checks (names as in the table)")
    args = p.parse_args(argv)
    record = {"gpu": None, "checks": [], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    bundle = args.bundle or (HERE.parent / ".gpu_site")
    if args.bundle is not None or bundle.is_dir():  # before torch: the bundle's typing_extensions must come first
        record["bundle"] = use_bundle(bundle.resolve())
    if args.model is None:
        fp16 = bundle_model("minilm-l6-fp16")
        args.model = str(fp16) if fp16 is not None else "minilm-l6"
    if not cuda():
        print("gpu_check: no CUDA GPU on this machine; nothing GPU-specific ran")
        record["checks"] = [skipped_without_gpu(name) for name in CHECKS
                            if not args.only or name in args.only]
        print("\n" + table(record["checks"]))
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        return 0
    import torch

    record["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="tcf-gpu-check-") as tmp:
        ctx = Context(Path(tmp), args.model)
        record["model"] = ctx.model_note
        print(f"gpu_check on {record['gpu']}, model {ctx.model_note}", flush=True)
        for name, fn in CHECKS.items():
            if args.only and name not in args.only:
                continue
            record["checks"].append(run_check(name, fn, ctx))
            print(table(record["checks"][-1:]).splitlines()[1], flush=True)
    print("\n" + table(record["checks"]))
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
