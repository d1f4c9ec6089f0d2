"""A sweep logs when each sitting of each run began and ended (OUT/sweep-log.jsonl), so a study run over many
sittings and processes has a measured wall time: the union of its sittings, a killed one ending at the checkpoint
its next sitting resumed from."""

from __future__ import annotations

import json

import yaml

from tcf.cli import main
from tcf.experiments.sweep import LEDGER, ledger_time, load_experiment, run_sweep


def write(out, events):
    out.mkdir(parents=True, exist_ok=True)
    (out / LEDGER).write_text("".join(json.dumps(e) + "\n" for e in events) + '{"cut by a kill')


def test_the_wall_time_is_the_union_of_sittings_and_a_killed_one_ends_at_its_checkpoint(tmp_path):
    write(tmp_path, [
        {"at": 0, "pid": 1, "run": "a", "event": "start"},
        {"at": 100, "pid": 2, "run": "b", "event": "start"},  # beside a: overlap counted once
        {"at": 300, "pid": 1, "run": "a", "event": "end", "state": "done"},
        # b's process is killed; its last checkpoint was written at 400; resumed at 1000 by process 3
        {"at": 1000, "pid": 3, "run": "b", "event": "start", "checkpoint_at": 400},
        {"at": 1200, "pid": 3, "run": "b", "event": "end", "state": "done"},
        {"at": 2000, "pid": 4, "run": "c", "event": "start"},  # still running: not counted, said
    ])
    got = ledger_time(tmp_path)
    assert got["sittings"] == 3 and got["open"] == 1 and got["since"] == 0
    assert abs(got["hours"] * 3600 - (400 + 200)) < 1e-9  # [0, 400] and [1000, 1200]


def test_a_sweep_writes_its_ledger_and_status_reports_the_wall_time(tiny_dataset, tmp_path, capsys):
    doc = {"name": "t", "data": {"dataset": str(tiny_dataset.path)}, "cache_root": str(tmp_path / "cache"),
           "model": {"dim": 16, "max_len": 8}, "train": {"epochs": 1, "batch_size": 16}, "eval": {"bootstrap": 20},
           "axes": {"seed": [0, 1]}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    run_sweep(load_experiment(tmp_path / "e.yaml"), out, progress=False, log=lambda _: None)
    events = [json.loads(line) for line in (out / LEDGER).read_text().splitlines()]
    assert [(e["event"], e.get("state")) for e in events] == [("start", None), ("end", "done")] * 2
    got = ledger_time(out)
    assert got["sittings"] == 2 and got["open"] == 0 and got["hours"] > 0
    assert main(["sweep", str(tmp_path / "e.yaml"), "--out", str(out), "--status"]) == 0
    assert "wall time with a run in progress, from " in capsys.readouterr().out
