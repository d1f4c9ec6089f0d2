"""The report shows the headline metric on non-repeat targets beside the overall one when targets repeat."""

from __future__ import annotations

import json

from tcf.experiments.report import write_report


def put(root, name, *, tower, ndcg, fresh, repeats):
    folder = root / name
    folder.mkdir()
    split = {"metrics": {"ndcg@10": {"mean": ndcg, "ci95": [ndcg - 0.01, ndcg + 0.01]}},
             "n_repeat_targets": repeats,
             "slices": {"repeat": {"n_users": repeats, "metrics": {"ndcg@10": 1.0}},
                        "non-repeat": {"n_users": 100 - repeats, "metrics": {"ndcg@10": fresh}}}}
    (folder / "results.json").write_text(json.dumps({
        "config": {"name": name, "seed": 0, "model": {"head": "sasrec", "tower": tower}, "encoder": {"model": "m"}},
        "metrics": {"valid": split, "test": split}}))


def test_non_repeat_column(tmp_path):
    put(tmp_path, "id", tower="id", ndcg=0.30, fresh=0.05, repeats=25)
    put(tmp_path, "text", tower="frozen", ndcg=0.10, fresh=0.08, repeats=25)
    md = write_report(tmp_path).read_text()
    assert "| non-repeat ndcg@10 |" in md
    assert "| 0.0500 (25 repeat targets) |" in md and "| 0.0800 (25 repeat targets) |" in md
