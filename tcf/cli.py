"""The ``tcf`` command line.

Every subcommand has ``--help``.  Errors caused by input (a bad file, an unknown
setting) print one message naming what is wrong and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from tcf import __version__
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
    prep.add_argument("source", help="ml-100k | tcf-tsv | mind | hm | table | synthetic")
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
