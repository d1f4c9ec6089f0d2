"""The ``tcf`` command line.

Every subcommand has ``--help``.  Errors caused by input (a bad file, an unknown
setting) print one message naming what is wrong and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from tcf import __version__, extensions
from tcf.errors import ConfigError, TcfError

# ---------------------------------------------------------------- data

def _split_settings(source: str, settings: dict) -> tuple[dict, dict]:
    """Divide ``key=value`` settings between preprocessing and the source's own options."""
    from tcf.data import PrepareOptions, get_source

    prep_keys = {f.name for f in dataclasses.fields(PrepareOptions)}
    src_keys = {f.name for f in dataclasses.fields(get_source(source).Options)}
    prep = {k: v for k, v in settings.items() if k in prep_keys}
    src = {k: v for k, v in settings.items() if k in src_keys}
    unknown = [k for k in settings if k not in prep_keys | src_keys]
    if unknown:
        raise ConfigError(f"unknown setting '{unknown[0]}' for source {source}; preprocessing settings: "
                          f"{sorted(prep_keys)}; {source} settings: {sorted(src_keys) or 'none'}")
    return prep, src


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from tcf.config import from_dict, load_yaml, parse_overrides
    from tcf.data import PrepareOptions, prepare

    settings = load_yaml(args.config) if args.config else {}
    settings.update(parse_overrides(args.set or []))
    for flag in ("template", "min_user_interactions", "min_item_interactions", "max_seq_len"):
        if getattr(args, flag) is not None:
            settings[flag] = getattr(args, flag)
    for flag in ("dedupe", "keep_unused_items"):
        if getattr(args, flag):
            settings[flag] = True
    prep, src = _split_settings(args.source, settings)
    options = from_dict(PrepareOptions, prep, where="preprocessing")
    start = time.perf_counter()
    ds = prepare(args.source, args.path, args.out, options, src)
    print(f"prepared {args.source} in {time.perf_counter() - start:.1f}s -> {ds.path}", file=sys.stderr)
    print(ds.summary())
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from tcf.data import load_dataset

    ds = load_dataset(args.dir)
    if args.json:
        print(json.dumps({"path": str(ds.path), "fingerprint": ds.fingerprint, **ds.meta["stats"]}, indent=2))
    else:
        print(ds.summary())
    return 0


def cmd_data_sources(args: argparse.Namespace) -> int:
    from tcf.data import SOURCES, get_source

    for name in SOURCES:
        module = get_source(name)
        doc = (module.__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{f.name}={f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}"
                         for f in dataclasses.fields(module.Options))
        print(f"{name:10s} {doc}")
        if opts:
            print(f"{'':10s}   settings: {opts}")
    return 0


# ---------------------------------------------------------------- encoders

ENCODER_FLAGS = ("model", "backend", "revision", "layer", "pooling", "max_tokens", "dtype", "quantization", "device",
                 "device_map", "batch_size", "padding_side")


def add_encoder_args(p: argparse.ArgumentParser, *, dataset_required: bool = True) -> None:
    from tcf.encoders.zoo import ZOO

    g = p.add_argument_group("encoder")
    g.add_argument("--dataset", required=dataset_required, help="dataset folder, or a source name prepared under data/ on first use")
    g.add_argument("--model", default="minilm-l6",
                   help=f"zoo name ({', '.join(ZOO)}), hub name, model folder or .gguf file")
    g.add_argument("--backend", default="hf", help=f"encoder backend: {extensions.ENCODERS.help()}")
    g.add_argument("--revision", help="hub revision")
    g.add_argument("--layer", type=int, default=-1, help="hidden-state index: 0 = embeddings, -1 = final output")
    g.add_argument("--pooling", default="mean", choices=extensions.POOLINGS.choices())
    g.add_argument("--max-tokens", type=int, default=64, help="texts are truncated to this many tokens (counted)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--quantization", choices=["int8", "int4"], help="bitsandbytes quantization")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--device-map", help="accelerate sharding across devices, e.g. auto")
    g.add_argument("--batch-size", type=int, default=64, help="halves automatically on out-of-memory")
    g.add_argument("--padding-side", default="right", choices=["right", "left"])
    g.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other encoder setting (e.g. api_base=...)")
    g.add_argument("--template", help="item text template (default: the dataset's)")
    g.add_argument("--cache-root", default="embeddings_cache", help="embedding cache folder")


def encoder_spec(args: argparse.Namespace):
    from tcf.config import from_dict, parse_overrides
    from tcf.encoders import EncoderSpec

    values = {k: getattr(args, k) for k in ENCODER_FLAGS if getattr(args, k) is not None}
    values.update(parse_overrides(args.set or []))
    return from_dict(EncoderSpec, values, where="encoder")


def _cached(args: argparse.Namespace, *, progress: bool = True):
    from tcf.data import ensure_dataset
    from tcf.encoders.extract import extract

    ds = ensure_dataset(args.dataset)
    spec = encoder_spec(args)
    report = extract(ds, spec, root=args.cache_root, kind=getattr(args, "kind", "pooled"), template=args.template,
                     storage=getattr(args, "storage", None), shard_rows=getattr(args, "shard_rows", 1024),
                     progress=progress)
    return ds, spec, report


def cmd_extract(args: argparse.Namespace) -> int:
    if args.list_models:
        from tcf.encoders.zoo import ZOO

        for e in ZOO.values():
            print(f"{e.name:14s} {e.description}  [{e.install}]")
        return 0
    if args.dataset is None:
        raise ConfigError("--dataset is required")
    ds, spec, r = _cached(args)
    stats = r.entry.manifest["stats"]
    if r.computed_rows:
        reused = f", {r.reused_shards} shard(s) reused from an interrupted run" if r.reused_shards else ""
        print(f"embedded {r.computed_rows:,} items in {r.seconds:.1f}s: {r.items_per_s:,.1f} items/s, "
              f"{r.tokens_per_s:,.0f} tokens/s{reused} (wall {r.wall_seconds:.1f}s)")
    else:
        print(f"cache already complete ({r.wall_seconds:.2f}s to verify)")
    print(f"truncated texts: {stats['n_truncated']:,} at {spec.max_tokens} tokens; empty: {stats.get('n_empty', 0)}")
    shape = "x".join(str(x) for x in r.entry.manifest['files'][next(iter(r.entry.manifest['files']))]['shape'])
    print(f"parameters: {r.entry.manifest.get('n_parameters') or 'n/a'}; rows {shape}")
    print(f"cache: {r.entry.path}")
    return 0


def index_spec(args: argparse.Namespace):
    from tcf.encoders.index import IndexSpec

    return IndexSpec(type=args.type or "flat", normalize=not args.no_normalize, gpu=args.gpu)


def cmd_index(args: argparse.Namespace) -> int:
    from tcf.encoders.index import ItemIndex, index_path

    ds, spec, r = _cached(args)
    ispec = index_spec(args)
    start = time.perf_counter()
    index = ItemIndex.build(r.entry.vectors, ispec)
    path = index.save(index_path(r.entry.path, ispec), {"cache_key_hash": r.entry.manifest["key_hash"]})
    print(f"{ispec.type} index over {index.n_items:,} items x {index.dim} built in "
          f"{time.perf_counter() - start:.2f}s{' on GPU' if index.meta.get('gpu') else ''}: {path}")
    return 0


def _neighbors_index(entry, args: argparse.Namespace):
    """The index ``tcf index`` saved for this cache (``--type``'s, or the newest), else a flat one built in
    memory; which one it is goes to stderr, since approximate indexes can give other neighbours."""
    from tcf.encoders.index import ItemIndex, saved_index

    found = saved_index(entry, type=args.type, normalize=not args.no_normalize, gpu=args.gpu)
    if found is not None:
        print(f"index: {found[0].spec.type}, saved at {found[1]}", file=sys.stderr)
        return found[0]
    ispec = index_spec(args)
    print(f"index: {ispec.type}, built in memory (none saved for this cache; `tcf index` saves one)", file=sys.stderr)
    return ItemIndex.build(entry.vectors, ispec)


def cmd_neighbors(args: argparse.Namespace) -> int:
    import numpy as np

    from tcf.encoders import build_encoder

    ds, spec, r = _cached(args, progress=False)
    index = _neighbors_index(r.entry, args)
    texts = ds.item_texts(r.entry.key["template"])
    if args.item is not None or args.source_id is not None:
        item = args.item
        if args.source_id is not None:
            hits = np.flatnonzero(ds.items["source_id"].to_numpy() == args.source_id)
            if not len(hits):
                raise ConfigError(f"no item with source id {args.source_id!r} in {ds.path}")
            item = int(hits[0]) + 1
        if not 1 <= item <= ds.n_items:
            raise ConfigError(f"--item must be within 1..{ds.n_items}")
        query, exclude, label = np.asarray(r.entry.vectors[item], dtype=np.float32), [item], f"item {item}"
        label += f": {texts[item]}"
    elif args.text is not None:
        query = build_encoder(spec).embed([args.text]).vectors[0]
        exclude, label = None, f"text: {args.text}"
    else:
        raise ConfigError("give --item ID, --source-id ID or --text TEXT")
    scores, ids = index.search(query[None, :], args.k, exclude=exclude)
    print(f"nearest to {label}")
    for rank, (score, item) in enumerate(zip(scores[0], ids[0]), start=1):
        if item > 0:
            print(f"{rank:3d}. {score:.4f}  [{item}] {texts[item]}")
    return 0


# ---------------------------------------------------------------- training

def _run_out(args: argparse.Namespace, cfg) -> Path:
    """--out, or runs/RUN_ID (tcf.run.config.run_id, the id a sweep gives the same settings): the same
    settings always land in the same folder, whichever command runs them.  A folder named by the id
    older versions of tcf train gave (a hash of the whole config) is still found and used."""
    from tcf.hashing import json_digest
    from tcf.run.config import resolved, run_id

    if args.out:
        return Path(args.out)
    out, older = Path("runs") / run_id(cfg), Path("runs") / f"{cfg.name}-{json_digest(resolved(cfg), 8)}"
    if not out.exists() and older.is_dir():
        print(f"tcf: using {older} (named by an older tcf; the same settings are now {out})", file=sys.stderr)
        return older
    return out


def _prepare_out(out: Path, cfg, args: argparse.Namespace) -> dict | None:
    """What ``out`` already holds, settled before anything is written (tcf train and tcf zeroshot).

    -> the saved results of a finished run of the same settings (the caller skips the run), or None
    (go ahead).  Another config's run, finished or not, is refused by check_run_folder unless --force;
    an unfinished run of this config is continued with --resume only, never restarted unasked.
    """
    from tcf.experiments.sweep import LAST_CHECKPOINT, RunFolderError, check_run_folder, clear_results
    from tcf.run.results import read_results

    state = check_run_folder(out, cfg, force=args.force)
    if state == "done":
        print(f"tcf: {out} already holds a finished run of these settings: skipped (--force runs it again)",
              file=sys.stderr)
        return read_results(out).to_dict()
    if state == "resume" and not getattr(args, "resume", False):
        raise RunFolderError(f"{out} holds an unfinished run of these settings ({LAST_CHECKPOINT}): add --resume "
                             f"to continue it, or --force to start over")
    if args.force:
        clear_results(out)
    return None


def cmd_train(args: argparse.Namespace) -> int:
    from tcf.run.config import load_config
    from tcf.train.loop import train

    cfg = load_config(args.config, args.set)
    out = _run_out(args, cfg)
    results = _prepare_out(out, cfg, args)
    if results is None:
        results = train(cfg, out, resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # torchrun / deepspeed launch: rank 0 reports
        return 0
    print_train_results(results, out)
    return 0


def print_train_results(results: dict, out: Path) -> None:
    from tcf.run.results import RunRecord

    record = RunRecord.from_dict(results)
    for split in ("valid", "test"):
        ms = record.split(split)["metrics"]
        line = "  ".join(f"{k} {ms[k]['mean']:.4f}" for k in ("hr@10", "ndcg@10", "mrr@10"))
        ci = ms["ndcg@10"].get("ci95")
        print(f"{split:5s} {line}" + (f"  (ndcg@10 95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""))
    t = record.timings
    print(f"best epoch {record.section('best_epoch')} of {record.section('epochs_run')}; {t['seconds_to_best']:.1f}s "
          f"to best, {t['wall_seconds']:.1f}s wall; parameters {record.section('parameters')['trainable']:,} trainable")
    print(f"results: {Path(out) / 'results.json'}")


# ---------------------------------------------------------------- zero-shot

def cmd_zeroshot(args: argparse.Namespace) -> int:
    from tcf.run.config import load_config
    from tcf.zeroshot import run_zeroshot

    overrides = ["task=zeroshot", *(args.set or [])]
    if args.limit is not None:
        overrides.append(f"zeroshot.limit={args.limit}")
    cfg = load_config(args.config, overrides)
    out = _run_out(args, cfg)
    r = _prepare_out(out, cfg, args)
    if r is None:
        r = run_zeroshot(cfg, out, progress=not args.quiet)
    print_zeroshot_results(r, cfg, out)
    return 0


def print_zeroshot_results(r: dict, cfg, out: Path) -> None:
    from tcf.run.results import RunRecord

    record = RunRecord.from_dict(r)
    split = cfg.zeroshot.split
    m = record.split(split)
    rows = [("llm", m["metrics"]), ("pop", m["baselines"]["pop"]["metrics"]), ("random", m["baselines"]["random"]["metrics"])]
    names = [k for k in ("hr@1", "hr@5", "hr@10", "ndcg@10") if k in m["metrics"]]
    print(f"{split} ({m['n_users']} users, {record.section('candidates')['n_candidates']} candidates)  "
          + "  ".join(names))
    for label, ms in rows:
        print(f"  {label:7s}" + "".join(f" {ms[k]['mean']:8.4f}" for k in names))
    c = m["compliance"]
    print(f"compliance: valid {c['valid']:.1%}, partial {c['partial']:.1%}, failed {c['failed']:.1%} "
          f"of {c['n_prompts']} prompts; backend errors {c['backend_errors']}")
    b, t = record.section("backend"), record.timings
    speed = f", {t['prompts_per_s']:.2f} prompts/s" if t["prompts_per_s"] else ""
    print(f"backend {b['name']} ({b['identity']}): {b['calls']} calls, {b['cache_hits']} cached{speed}; "
          f"{t['wall_seconds']:.1f}s wall")
    print(f"results: {Path(out) / 'results.json'}")


# ---------------------------------------------------------------- experiments

def _experiment_out(args: argparse.Namespace, exp) -> Path:
    return Path(args.out) if args.out else Path("runs") / exp.name


def _sweep(args: argparse.Namespace, shard_of: tuple[int, int]):
    from tcf.experiments.sweep import load_experiment, run_sweep

    exp = load_experiment(args.config, args.set)
    out = _experiment_out(args, exp)
    if getattr(args, "list", False):
        for k, run in enumerate(exp.runs):
            print(f"{k:4d} {run.id}  {run.overrides}")
        return exp, None
    if getattr(args, "status", False):
        from collections import Counter

        from tcf.experiments.sweep import run_status

        states = [run_status(run, out / run.id) for run in exp.runs]
        for k, (run, state) in enumerate(zip(exp.runs, states)):
            print(f"{k:4d} {run.id}  {state}")
        counts = Counter(s.split(":")[0].split(" (")[0].split(" after")[0] for s in states)
        print(f"{len(exp.runs)} run(s) in {out}: " + ", ".join(f"{n} {what}" for what, n in counts.most_common()))
        from tcf.experiments.sweep import ledger_summary

        if spent := ledger_summary(out):
            print(spent)
        return exp, None
    return exp, run_sweep(exp, out, shard_of=shard_of, progress=not args.quiet, force=args.force,
                          only=getattr(args, "run", None), claim=getattr(args, "claim", False),
                          order=getattr(args, "order", "file"))


def _finish(summary, *, report: bool) -> int:
    if report:
        from tcf.experiments.report import write_report
        from tcf.fsutil import file_lock
        from tcf.tracking import log_sweep_report

        with file_lock(Path(summary.out) / ".report.lock"):  # claiming processes may finish together
            path = write_report(summary.out)
        print(f"report: {path}")
        log_sweep_report(summary.out, Path(path).parent)  # tracking: on (MLflow), bounded by its timeout
    print(f"{len(summary.ran)} run(s) done, {len(summary.skipped)} already done, {len(summary.failed)} failed")
    for run_id, reason in summary.failed.items():
        print(f"  failed: {run_id}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    _, summary = _sweep(args, (0, 1))
    return 0 if summary is None else _finish(summary, report=True)


def cmd_sweep(args: argparse.Namespace) -> int:
    from tcf.experiments.sweep import parse_shard

    if (args.launcher != "local" or args.dry_run) and not (args.list or args.status):  # scheduler jobs
        # (tcf/experiments/launch.py); --list and --status only read, whichever launcher is named
        from tcf.experiments.launch import cli_launch

        return cli_launch(args)
    shard_of = parse_shard(args.shard)
    _, summary = _sweep(args, shard_of)
    if summary is None:
        return 0
    if shard_of[1] > 1 or summary.held:
        who, each = (f"shard {shard_of[0]}/{shard_of[1]}", "shard") if shard_of[1] > 1 else ("this process", "process")
        print(f"{who} finished; when every {each} is done: tcf report {summary.out}")
    return _finish(summary, report=shard_of[1] == 1 and not summary.held and not args.no_report)


def cmd_report(args: argparse.Namespace) -> int:
    from tcf.config import parse_overrides
    from tcf.experiments.report import write_report

    print(f"report: {write_report(args.runs_dir, args.out, parse_overrides(args.set or []) or None)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tcf.experiments.planner import hardware, plan, render

    if args.dataset is not None and args.items is not None:
        raise ConfigError("give --dataset or --items, not both")
    hw = hardware(args.gpus, args.cpu_mem)
    p = plan(args.model, hw, items=args.items, tokens=args.tokens, batch=args.batch,
             finetune_layers=args.finetune_layers, dtype=args.dtype, dataset=args.dataset, tflops=args.tflops,
             loss=args.loss, max_len=args.max_len)
    if args.llm_layers is not None:  # model.head: llm with this model as model.llm_model
        from tcf.experiments.planner import llm_head_plan

        p["llm_head"] = llm_head_plan(args.model, layers=args.llm_layers, train=args.llm_train, batch=args.batch,
                                      max_len=args.max_len, dtype=args.dtype, dropout=args.dropout, hw=hw)
    print(json.dumps(p, indent=2) if args.json else render(p))
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcf", description="Language models as item encoders and zero-shot "
                                "recommenders: text-based collaborative filtering, measured.")
    p.add_argument("--version", action="version", version=f"tcf {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="prepare datasets and show their statistics",
                          description="Turn raw files into a canonical dataset, and inspect it.")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    prep = dsub.add_parser(
        "prepare", help="raw files -> canonical dataset folder",
        description="Read a source's raw files and write items.parquet, interactions.parquet (with the "
                    "leave-one-out split), users.parquet and dataset.json to --out, atomically.",
        epilog="examples:\n"
               "  tcf data prepare ml-100k --out data/ml-100k            # the copy shipped by recbole\n"
               "  tcf data prepare ml-100k ~/ml-100k.zip --out data/ml-100k\n"
               "  tcf data prepare tcf-tsv ~/MIND-reference --out data/mind --max-seq-len 20\n"
               "  tcf data prepare table --set interactions=r.csv items=m.csv user=uid item=iid "
               "text=title --out data/mine\n"
               "  tcf data prepare synthetic --set seed=1 --out data/synth\n"
               "`tcf data sources` lists every source and its settings.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("source", help=extensions.SOURCES.help())
    prep.add_argument("path", nargs="?", default=None, help="folder or archive of raw files (ml-100k: optional)")
    prep.add_argument("--out", required=True, help="dataset folder to write (replaced atomically if it exists)")
    prep.add_argument("--config", help="YAML file of settings (preprocessing and the source's own)")
    prep.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="settings, overriding --config")
    prep.add_argument("--template", help="item text template, e.g. '{title} ({year}) {genres}'")
    prep.add_argument("--min-user-interactions", type=int, help="k-core: drop users with fewer interactions")
    prep.add_argument("--min-item-interactions", type=int, help="k-core: drop items with fewer interactions")
    prep.add_argument("--max-seq-len", type=int, help="keep each user's last MAX_SEQ_LEN + 3 interactions")
    prep.add_argument("--dedupe", action="store_true", help="keep only the first interaction per (user, item)")
    prep.add_argument("--keep-unused-items", action="store_true",
                      help="keep items no interaction refers to (they then take part in full ranking)")
    prep.set_defaults(func=cmd_data_prepare)

    stats = dsub.add_parser("stats", help="statistics of a prepared dataset",
                            description="Load a dataset folder (verifying its fingerprint) and print its statistics.")
    stats.add_argument("dir", help="dataset folder written by `tcf data prepare`")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=cmd_data_stats)

    sources = dsub.add_parser("sources", help="list the data sources and their settings",
                              description="List the data sources `tcf data prepare` reads, with their settings.")
    sources.set_defaults(func=cmd_data_sources)

    ex = sub.add_parser("extract", help="embed every item's text into the embedding cache",
                        description="Embed item texts with a language model and store the vectors in the cache "
                                    "(resumable; an existing complete cache is verified and reused).",
                        epilog="example: tcf extract --dataset ml-100k --model smollm2-135m --pooling mean --layer -1")
    add_encoder_args(ex, dataset_required=False)
    ex.add_argument("--kind", default="pooled", choices=["pooled", "tokens"],
                    help="pooled vectors, or token-level hidden states at --layer (for top-k fine-tuning)")
    ex.add_argument("--storage", choices=["fp32", "fp16", "auto"],
                    help="stored precision (default fp32 pooled; tokens auto: fp16 unless a value exceeds its range, then fp32)")
    ex.add_argument("--shard-rows", type=int, default=1024, help="items per resumable shard")
    ex.add_argument("--list-models", action="store_true", help="list the packaged models and exit")
    ex.set_defaults(func=cmd_extract)

    def index_args(q):
        q.add_argument("--type", choices=["flat", "hnsw", "ivfpq"],
                       help="FAISS index type (index: default flat; neighbors: default the newest saved one)")
        q.add_argument("--no-normalize", action="store_true", help="inner product on raw vectors (default: cosine)")
        q.add_argument("--gpu", default="auto", choices=["auto", "yes", "no"], help="use faiss-gpu")

    ix = sub.add_parser("index", help="build a FAISS index over a cache",
                        description="Build (and save beside the cache) a FAISS index over the item vectors.")
    add_encoder_args(ix)
    index_args(ix)
    ix.set_defaults(func=cmd_index)

    nb = sub.add_parser("neighbors", help="nearest items to an item or a text",
                        description="k nearest items by cosine similarity, from the index `tcf index` saved for this cache "
                                    "(--type's, or the newest one), else a flat one built in memory; stderr says which.",
                        epilog="example: tcf neighbors --dataset ml-100k --model minilm-l6 --text 'Star Wars'")
    add_encoder_args(nb)
    index_args(nb)
    nb.add_argument("--item", type=int, help="canonical item id")
    nb.add_argument("--source-id", help="the item's id in the raw files")
    nb.add_argument("--text", help="free text, embedded with the same model")
    nb.add_argument("-k", type=int, default=10)
    nb.set_defaults(func=cmd_neighbors)

    tr = sub.add_parser("train", help="train a recommender and evaluate it (full ranking)",
                        description="Train SASRec or DSSM with an ID or text item tower; the checkpoint is chosen on "
                                    "validation NDCG@10 and tested once. Writes OUT/results.json. OUT holding a finished "
                                    "run of the same settings: skipped; of other settings: refused, naming the "
                                    "settings that differ (--force replaces it).",
                        epilog="example: tcf train --config experiments/ml100k-sasrec-id.yaml --set train.epochs=5")
    tr.add_argument("--config", help="run config YAML (see experiments/)")
    tr.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="overrides, e.g. model.tower=frozen train.lr=3e-4. "
                    + "; ".join(f"{key}: {reg.help()}" for key, reg in extensions.EXTENSION_POINTS.items()
                                if key.startswith(("model.", "train.", "encoder."))))
    tr.add_argument("--out", help="run folder (default runs/NAME-HASH of the resolved config)")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    tr.add_argument("--force", action="store_true",
                    help="run even though OUT holds a run (finished, or of other settings), replacing its results")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    zs = sub.add_parser("zeroshot", help="prompt a chat LLM to rank candidates; score it against Pop and random",
                        description="Zero-shot recommendation: each sampled user's true next item plus negatives, "
                                    "rendered with a prompt template, answered by a chat backend ("
                                    f"{', '.join(extensions.CHAT_BACKENDS)}; "
                                    "replies cached in SQLite), parsed back to a ranking and scored with HR/NDCG/MRR "
                                    "beside Pop and random on the same candidates. Writes OUT/results.json and "
                                    "OUT/samples.jsonl; a finished run of the same settings there is skipped, one "
                                    "of other settings refused (--force replaces it).",
                        epilog="example: tcf zeroshot --config experiments/zeroshot-ml100k.yaml --limit 20 --out runs/zs")
    zs.add_argument("--config", help="run config YAML with a zeroshot: section (see experiments/)")
    zs.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="overrides, e.g. zeroshot.protocol=choice zeroshot.backend=openai zeroshot.api_base=URL")
    zs.add_argument("--limit", type=int, help="users sampled with the run seed (zeroshot.limit)")
    zs.add_argument("--out", help="run folder (default runs/NAME-HASH of the resolved config)")
    zs.add_argument("--force", action="store_true",
                    help="run even though OUT holds a run (finished, or of other settings), replacing its results")
    zs.add_argument("--quiet", action="store_true", help="no progress bar")
    zs.set_defaults(func=cmd_zeroshot)

    def experiment_args(q):
        q.add_argument("config", help="experiment YAML (base config + axes / runs) or a plain run config")
        q.add_argument("--out", help="output folder, one subfolder per run (default runs/NAME)")
        q.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides of the base config, e.g. train.epochs=3")
        q.add_argument("--list", action="store_true", help="print the expanded runs (index, id, settings) and exit")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        q.add_argument("--force", action="store_true",
                       help="run although OUT holds runs of other settings (an edited experiment file): beside "
                            "them, or over them in a run's own folder")

    rn = sub.add_parser("run", help="run an experiment config (one run or a sweep) and write its report",
                        description="Expand the config into runs, extract each text cache once, train (or prompt) "
                                    "every run, then write OUT/report/report.md with plots. Finished runs are "
                                    "skipped and killed ones resumed when run again.",
                        epilog="example: tcf run experiments/quickstart.yaml")
    experiment_args(rn)
    rn.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run (a shard of) a sweep: skip finished runs, resume killed ones",
                        description="Run the experiment's runs into OUT/RUN_ID/. Runs with results.json are skipped, "
                                    "a run with a checkpoint resumes from it, a failing run is recorded in "
                                    "OUT/RUN_ID/error.txt and the sweep goes on (exit status 1 at the end).",
                        epilog="examples:\n  tcf sweep experiments/scaling-cpu.yaml\n"
                               "  tcf sweep experiments/scaling.yaml --shard 0/4   # one of four processes / GPUs\n"
                               "  tcf sweep experiments/study-ml100k.yaml --claim --order seed   # start one per core\n"
                               "  tcf sweep experiments/scaling.yaml --list",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    experiment_args(sw)
    sw.add_argument("--shard", metavar="I/N", help="run only runs I, I+N, I+2N, ... of the list (0 <= I < N)")
    sw.add_argument("--claim", action="store_true", help="take runs one at a time, passing over any another "
                    "process is running (a lock in OUT/RUN_ID/.claim): start as many of these as you have cores or "
                    "GPUs and they share the work as they free up, unlike --shard's fixed split")
    sw.add_argument("--order", default="file", choices=["file", "seed"], help="file: the file's order (default); "
                    "seed: every run of the first seed before the next seed's, so a sweep cut short leaves a "
                    "complete one-seed table")
    sw.add_argument("--status", action="store_true", help="print each run's state in OUT (done with its test "
                    "NDCG@10, running, stopped after epoch N, failed, not started) and the counts; run nothing")
    sw.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    sw.add_argument("--run", action="append", metavar="RUN_ID", help="run only this run (repeatable): what one "
                    "cluster job runs")
    sw.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"],
                    help="local: run here (default); slurm: one job per run through submitit, resources from "
                         "tcf plan and the file's launcher: section; submitit-local: the same jobs as local processes")
    sw.add_argument("--dry-run", action="store_true", help="print the job table (run, resources, command), submit "
                    "nothing")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="markdown table, answers and plots from a folder of runs",
                        description="Aggregate every results.json under RUNS_DIR (mean and 95%% CI over seeds) into "
                                    "RUNS_DIR/report/report.md, report.json and PNG plots.",
                        epilog="example: tcf report runs/quickstart --set metrics=ndcg@10,hr@20")
    rp.add_argument("runs_dir", help="folder holding run folders with results.json (searched recursively)")
    rp.add_argument("--out", help="report folder (default RUNS_DIR/report)")
    rp.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="report settings: title, split, metrics, alpha")
    rp.set_defaults(func=cmd_report)

    pl = sub.add_parser("plan", help="parameters, memory, cache size and loading strategy for a model and hardware",
                        description="Instantiate the model's real config on the meta device (no weights), count its "
                                    "parameters exactly, and report weight memory per precision, activation memory "
                                    "(estimated), the cache size on disk (exact) and which strategy extraction and "
                                    "top-k fine-tuning need on the given hardware, with the command to run.",
                        epilog="examples:\n"
                               "  tcf plan --model facebook/opt-66b --gpus 8x80GB --dataset data/ml-100k\n"
                               "  tcf plan --model facebook/opt-175b --gpus 1x80GB --cpu-mem 1TB --items 1000000\n"
                               "  tcf plan --model minilm-l6 --gpus 0 --cpu-mem 24GB --json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--model", required=True, help="OPT hub name (facebook/opt-125m ... facebook/opt-175b, known "
                    "offline), zoo name, model folder, config.json, .gguf file or cached hub name")
    pl.add_argument("--gpus", default="0", help="COUNTxSIZE, e.g. 8x80GB (sizes in GiB); 0 = CPU only (default)")
    pl.add_argument("--cpu-mem", default="512GB", help="CPU memory, e.g. 512GB (default), 24GB, 1TB")
    pl.add_argument("--dataset", help="dataset folder: its item count sizes the cache")
    pl.add_argument("--items", type=int, help="number of items, instead of --dataset")
    pl.add_argument("--tokens", type=int, default=64, help="text length in tokens (max_tokens; default 64)")
    pl.add_argument("--batch", type=int, default=64, help="texts per extraction forward; train.batch_size (sequences "
                    "per step) for fine-tuning (default 64)")
    pl.add_argument("--loss", default="inbatch", choices=["inbatch", "bce", "ce"],
                    help="fine-tuning: train.loss, which sets the items a step runs (default inbatch)")
    pl.add_argument("--max-len", type=int, default=50, help="fine-tuning: model.max_len (default 50)")
    pl.add_argument("--finetune-layers", type=int, default=2, help="top-k blocks fine-tuned (0 = frozen only)")
    pl.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="GPU weights and activations")
    pl.add_argument("--llm-layers", type=int, help="also size the llm head's user LM (model.head: llm): the bottom "
                    "N blocks of --model (0 = all) over --batch sequences of --max-len items")
    pl.add_argument("--llm-train", default="full", help="llm head: model.llm_train, full | top:K | lora | frozen")
    pl.add_argument("--dropout", type=float, default=0.2, help="llm head: model.dropout, its input and attention "
                    "dropout, whose masks training keeps (default 0.2, the default config's)")
    pl.add_argument("--tflops", type=float, help="effective TFLOP/s per device for the time estimate "
                    "(default 100 on GPU, 0.15 on CPU)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TcfError as e:
        print(f"tcf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tcf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
