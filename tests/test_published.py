"""The published studies: `tcf report` rebuilds each committed report from the committed records alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tcf.data import ensure_dataset, load_dataset
from tcf.experiments.report import write_report

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ROOT / "results" / "study-ml100k"
PUBLISHED = sorted(p.parents[1] for p in (ROOT / "results").glob("*/report/report.md"))


def _prepare_datasets(folder: Path) -> None:
    """The datasets the runs used, prepared where their records say (the report's cold-item and popularity
    lines read them); a prepared dataset must be the very one the runs saw."""
    seen = set()
    for res in sorted(folder.glob("*/results.json")):
        record = json.loads(res.read_text())
        path, fingerprint = record["dataset"]["path"], record["dataset"]["fingerprint"]
        if path in seen:
            continue
        seen.add(path)
        if not (Path(path) / "dataset.json").is_file():
            data = record["config"]["data"]
            ensure_dataset(data["dataset"], root=data.get("root", "data"), source_options=data.get("source_options"))
        assert load_dataset(path, verify=False).fingerprint == fingerprint, f"{path} is not the dataset {res} used"


def test_the_headline_study_is_published():
    assert (HEADLINE / "report" / "report.md").is_file() and HEADLINE in PUBLISHED


@pytest.mark.slow
@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_published_report_regenerates_byte_for_byte(folder, tmp_path, monkeypatch):
    """In a checkout where a study is still running, a run that finished after the last results commit is read
    too and the report differs: commit finished runs with their regenerated report first (results/README.md)."""
    monkeypatch.chdir(ROOT)  # records and report settings name paths from the repository root
    rel = folder.relative_to(ROOT)
    plan = json.loads((folder / "experiment.json").read_text())
    for d in [rel, *map(Path, (plan.get("report") or {}).get("controls") or [])]:
        _prepare_datasets(d)
    md = write_report(rel, tmp_path / "report")
    assert md.read_text() == (folder / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.json").read_text() == (folder / "report" / "report.json").read_text()


def test_every_question_the_committed_runs_can_answer_is_answered():
    """A report change once made 'which user model?' read 'not measured' although both heads had trained the
    same towers, and byte-for-byte regeneration cannot notice that (the committed report changed with it):
    wherever the committed runs hold both sides of a comparison, the committed answer must be measured."""
    md = (HEADLINE / "report" / "report.md").read_text()
    answers = md.split("## Answers")[1].split("\n## ")[0]
    runs = [json.loads(p.read_text()) for p in HEADLINE.glob("*/results.json")]
    trained = {(r["config"]["model"]["head"], r["config"]["model"]["tower"]) for r in runs if r.get("task") == "train"}
    needs = {"Does text beat ID?": any(("sasrec", t) in trained for t in ("frozen", "finetune", "lora"))
             and ("sasrec", "id") in trained,
             "Which user model": ("sasrec", "id") in trained and ("dssm", "id") in trained,
             "Does fine-tuning beat a frozen encoder?": ("sasrec", "finetune") in trained
             and ("sasrec", "frozen") in trained,
             "How far is zero-shot prompting": any(r.get("task") == "zeroshot" for r in runs)}
    if needs["How far is zero-shot prompting"]:  # the computed position-bias line reads the zero-shot runs' replies
        assert "- Zero-shot position bias (computed" in md
    for question, answerable in needs.items():
        if answerable:
            section = answers.split(f"**{question}")[1].split("\n\n**")[0]
            assert "not measured" not in section.split("\n\n")[1], f"{question}: {section[:300]}"
