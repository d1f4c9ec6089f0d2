"""The README stays one screen with its two commands where CI reads them, its map lists every page of
docs/, and what the pages point at exists: relative links (and their #anchors), the repository paths
they name, and the package folders ARCHITECTURE.md assigns to stages.  tests/test_cli_docs.py checks
the commands, YAML and Python in the same pages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
ALL = [README, ROOT / "ARCHITECTURE.md", *PAGES]


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_readme_keeps_the_two_commands_where_ci_reads_them():
    lines = text(README).split("\n")
    assert lines[0] == "# tcf" and lines[1] == "" and lines[2] == "```bash" and lines[5] == "```"
    assert lines[3].startswith("python3 -m venv .venv && ")  # .ci/run: sed -n 4p
    assert lines[3].endswith(".venv/bin/tcf run experiments/quickstart.yaml")  # the main job
    assert lines[4] == ".venv/bin/python -m pytest"  # .ci/run: sed -n 5p
    ci = text(ROOT / ".ci" / "run")
    assert "sed -n '4p' README.md" in ci and "sed -n '5p' README.md" in ci


def test_readme_is_one_screen_of_overview():
    readme = text(README)
    assert len(readme.encode()) <= 8_000, "the reference belongs in docs/"
    assert readme.count("\n") <= 100
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings == ["What tcf found", "What the main job prints", "Status", "Documentation"]
    found = readme.split("## What tcf found", 1)[1].split("\n## ", 1)[0]
    for link in ("results/README.md", "benchmarks/README.md", "experiments/study-ml100k.yaml",
                 "(results/study-ml100k/report/report.md)", "report.md#trained-recommenders"):
        assert link in found
    assert readme.index("## What tcf found") < readme.index("## What the main job prints")


def test_the_map_lists_every_page():
    doc_map = text(README).split("## Documentation", 1)[1]
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", doc_map))
    assert linked == {f"docs/{p.name}" for p in PAGES}
    assert "(ARCHITECTURE.md)" in doc_map


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    for page in ALL:
        for target in re.findall(r"\]\(([^)\s]+)\)", text(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
            if anchor:
                anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", text(dest), re.M)}
                assert anchor in anchors, f"{page.relative_to(ROOT)}: link to {target}: no such heading"


def test_repository_paths_named_in_the_docs_exist():
    top = r"(?:tcf|experiments|benchmarks|tests|prompts|results|docs|\.ci)/"
    for page in ALL:
        for path in re.findall(rf"`({top}[\w./-]*)`", text(page)):
            if re.search(r"[A-Z]{3,}", path):  # a placeholder: tcf/models/NAME.py
                continue
            assert (ROOT / path).exists(), f"{page.relative_to(ROOT)} names `{path}`, which does not exist"


def test_architecture_assigns_every_package_folder():
    arch = text(ROOT / "ARCHITECTURE.md")
    for pkg in sorted(p for p in (ROOT / "tcf").iterdir() if (p / "__init__.py").is_file()):
        assert f"`tcf/{pkg.name}/`" in arch, f"ARCHITECTURE.md does not say which stage tcf/{pkg.name}/ is"
    assert "`tcf/cli.py`" in arch


def test_the_paired_comparison_snippet_reads_what_training_writes(tmp_path, monkeypatch):
    """docs/evaluation.md's per_user() on two real (tiny) training runs, then paired_test as the page says."""
    from tcf.data import prepare
    from tcf.experiments.config import load_config
    from tcf.train.loop import train

    monkeypatch.chdir(tmp_path)
    prepare("synthetic", None, "data/tiny",
            source_options={"n_users": 12, "n_items": 20, "n_topics": 2, "min_len": 3, "max_len": 5})
    snippet = re.findall(r"^```python\n(.*?)^```", text(ROOT / "docs" / "evaluation.md"), re.M | re.S)
    assert len(snippet) == 1
    scope: dict = {}
    exec(compile(snippet[0], "docs/evaluation.md", "exec"), scope)
    for run, seed in (("runs/a", 1), ("runs/b", 2)):
        cfg = load_config(None, ["data.dataset=data/tiny", "train.epochs=1", "eval.bootstrap=0", f"seed={seed}",
                                 "model.dim=8"])
        train(cfg, run, progress=False)
    a, b = scope["per_user"]("runs/a"), scope["per_user"]("runs/b")
    assert a.shape == b.shape == (12,) and ((0 <= a) & (a <= 1)).all()
    r = scope["paired_test"](a, b)
    assert set(r) >= {"mean_diff", "ci95", "p_value", "n"} and r["n"] == 12
