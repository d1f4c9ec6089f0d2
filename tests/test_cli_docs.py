"""The commands, YAML and Python of the README and of every page under docs/ are checked against the
code: every `tcf` / `torchrun -m tcf` line parses and the settings it passes with --set exist (its run
config loads), every YAML excerpt of a shipped file matches that file, the Python snippets run on tiny
data, and no command needs an activated virtualenv."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tcf.cli import _split_settings, build_parser, encoder_spec
from tcf.config import parse_overrides
from tcf.experiments.config import load_config
from tcf.experiments.sweep import expand, load_experiment

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
BARE_TOOLS = {"tcf", "torchrun", "pip", "pytest", "python", "deepspeed"}  # only as .venv/bin/...


def blocks(lang: str, doc: Path | None = None) -> list[str]:
    """The bodies of the ```LANG blocks of one page (or of every page)."""
    pages = DOCS if doc is None else [doc]
    return [body for page in pages
            for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
            if tag == lang]


def command_lines(doc: Path | None = None) -> list[str]:
    """Shell commands of ```bash blocks (continuations joined) and `$ ` lines of output samples."""
    lines = [ln for body in blocks("bash", doc) for ln in body.replace("\\\n", " ").splitlines()]
    lines += [ln[2:] for body in blocks("", doc) for ln in body.splitlines() if ln.startswith("$ ")]
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def commands(doc: Path | None = None) -> list[list[str]]:
    """Each command as argv, split at && ; | and with leading VAR=value assignments dropped."""
    out = []
    for line in command_lines(doc):
        words, current = shlex.split(line, comments=True), []
        for w in [*words, "&&"]:
            if w in ("&&", ";", "|", "&"):
                while current and re.fullmatch(r"[A-Z_]+=\S*", current[0]):
                    current.pop(0)
                if current:
                    out.append(current)
                current = []
            else:
                current.append(w)
    return out


def tcf_argv(argv: list[str]) -> list[str] | None:
    """The tcf arguments of a `.venv/bin/tcf ...` or `.venv/bin/torchrun ... -m tcf[.cli] ...` command."""
    if argv[0].endswith("bin/tcf"):
        return argv[1:]
    if argv[0].endswith("bin/torchrun") and "-m" in argv:
        at = argv.index("-m")
        return argv[at + 2:] if argv[at + 1] in ("tcf", "tcf.cli") else None
    return None


def test_no_command_needs_an_activated_virtualenv():
    bare = [" ".join(argv) for argv in commands() if argv[0] in BARE_TOOLS]
    assert not bare, f"write .venv/bin/TOOL: {bare}"


def check_command(argv: list[str]) -> None:
    """Parse one tcf command line as the CLI would and load what its --set settings feed: a run config (the
    file it names where that file is shipped, else the defaults), an experiment, an encoder spec or a source's
    settings; an unknown flag, subcommand or setting fails."""
    ns = build_parser().parse_args(argv)  # exits on an unknown flag or subcommand
    config = getattr(ns, "config", None)
    exists = config is not None and (ROOT / config).is_file()
    if ns.command == "train":
        load_config(ROOT / config if exists else None, ns.set)
    elif ns.command == "zeroshot":
        load_config(ROOT / config if exists else None, ["task=zeroshot", *(ns.set or [])])
    elif ns.command in ("run", "sweep") and exists:
        load_experiment(ROOT / config, ns.set)
    elif ns.command in ("extract", "index", "neighbors"):
        encoder_spec(ns)
    elif ns.command == "data" and ns.data_command == "prepare":
        _split_settings(ns.source, parse_overrides(ns.set or []))


def test_every_tcf_command_parses_and_its_settings_exist():
    checked, pages = 0, set()
    for doc in DOCS:
        for argv in commands(doc):
            args = tcf_argv(argv)
            if args is None:
                continue
            try:
                check_command(args)
            except (Exception, SystemExit) as e:
                pytest.fail(f"{doc.relative_to(ROOT)}: {' '.join(argv)}: {e!r}")
            checked += 1
            pages.add(doc.name)
    assert checked >= 30
    for page in ("README.md", "datasets.md", "encoders.md", "training.md", "zeroshot.md", "experiments.md",
                 "planner.md", "first-session.md"):
        assert page in pages, f"{page}: no tcf command checked"


def test_a_setting_that_does_not_exist_is_caught():
    """The check above would fail on a stale --set key, a removed flag or an unknown source setting."""
    for argv in (["train", "--config", "experiments/ml100k-sasrec-id.yaml", "--set", "train.no_such_key=1"],
                 ["zeroshot", "--config", "experiments/zeroshot-ml100k.yaml", "--set", "zeroshot.no_such=1"],
                 ["extract", "--dataset", "data/x", "--set", "no_such_key=1"],
                 ["data", "prepare", "table", "--set", "no_such_key=1"],
                 ["plan", "--model", "minilm-l6", "--no-such-flag"]):
        with pytest.raises((Exception, SystemExit)):
            check_command(argv)


def subset(part, whole, where="") -> list[str]:
    """Where ``part`` (an excerpt) says something ``whole`` (the file) does not."""
    if isinstance(part, dict):
        if not isinstance(whole, dict):
            return [f"{where}: not a mapping in the file"]
        return [e for k, v in part.items() for e in (subset(v, whole[k], f"{where}.{k}") if k in whole
                                                       else [f"{where}.{k}: not in the file"])]
    if isinstance(part, list) and isinstance(whole, list) and len(part) == len(whole):
        return [e for i, (a, b) in enumerate(zip(part, whole)) for e in subset(a, b, f"{where}[{i}]")]
    return [] if part == whole else [f"{where}: {part!r} in the docs, {whole!r} in the file"]


def test_yaml_excerpts_expand_and_match_the_files_they_show():
    shown = 0
    for body in blocks("yaml"):
        doc = yaml.safe_load(body)
        expand(doc)  # every key is a real setting
        shipped = ROOT / "experiments" / f"{doc.get('name')}.yaml"
        if shipped.is_file():
            assert subset(doc, yaml.safe_load(shipped.read_text())) == [], shipped.name
            shown += 1
    assert shown >= 1


def test_python_snippets_run_on_tiny_data(tmp_path, monkeypatch):
    from tcf.data import prepare

    monkeypatch.chdir(tmp_path)
    prepare("synthetic", None, "data/ml-100k",
            source_options={"n_users": 12, "n_items": 20, "n_topics": 2, "min_len": 3, "max_len": 5})
    ran = 0
    for doc in DOCS:
        for code in blocks("python", doc):
            exec(compile(code, str(doc.relative_to(ROOT)), "exec"), {})
            ran += 1
    assert ran


@pytest.mark.parametrize(("protocol", "n"), [("rank", 20), ("choice", 4), ("topk-json", 100)])
def test_zeroshot_ml100k_leaves_the_list_size_to_the_protocol(protocol, n):
    """docs/zeroshot.md's protocol table and the file's comment: --set zeroshot.protocol=choice asks for one of 4."""
    cfg = load_config(ROOT / "experiments" / "zeroshot-ml100k.yaml", [f"zeroshot.protocol={protocol}"])
    assert cfg.zeroshot.candidates() == n
