"""A sweep logs when each sitting of each run began and ended (OUT/sweep-log.jsonl), so a study run over many
sittings and processes has a measured wall time: the union of its sittings, a killed one ending at the checkpoint
its next sitting resumed from or at its own last beat."""

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
    assert got["sittings"] == 3 and got["open"] == 1 and got["open_unbeaten"] == 1 and got["unended"] == 0
    assert got["since"] == 0
    assert abs(got["hours"] * 3600 - (400 + 200)) < 1e-9  # [0, 400] and [1000, 1200]


def test_a_sitting_killed_with_its_machine_ends_at_its_last_beat(tmp_path):
    write(tmp_path, [
        {"at": 0, "pid": 1, "run": "a", "event": "start"},
        {"at": 120, "pid": 1, "run": "a", "event": "beat"},
        {"at": 240, "pid": 1, "run": "a", "event": "beat"},
        # the machine is lost with its checkpoints: a starts again from scratch, no checkpoint_at
        {"at": 5000, "pid": 2, "run": "a", "event": "start"},
        {"at": 5120, "pid": 2, "run": "a", "event": "beat"},  # still running: counted to its last beat
        {"at": 6000, "pid": 3, "run": "b", "event": "start"},  # no beat and no end: left out
        {"at": 7000, "pid": 4, "run": "c", "event": "start"},
        {"at": 9000, "pid": 5, "run": "c", "event": "start"},  # c's first sitting: killed, nothing to date it
        {"at": 9100, "pid": 5, "run": "c", "event": "end", "state": "done"},
        {"at": 9200, "pid": 9, "run": "a", "event": "beat"},  # another process's beat for a does not extend it
    ])
    got = ledger_time(tmp_path)
    assert got["sittings"] == 3 and got["open"] == 2 and got["open_unbeaten"] == 1 and got["unended"] == 1
    assert abs(got["hours"] * 3600 - (240 + 120 + 100)) < 1e-9


def test_a_killed_sitting_ends_at_the_later_of_its_beat_and_checkpoint_and_never_after_its_restart(tmp_path):
    write(tmp_path, [
        {"at": 0, "pid": 1, "run": "a", "event": "start"},
        {"at": 240, "pid": 1, "run": "a", "event": "beat"},
        {"at": 1000, "pid": 2, "run": "a", "event": "start", "checkpoint_at": 200},  # the beat is later: 240
        {"at": 1100, "pid": 2, "run": "a", "event": "end", "state": "done"},
        {"at": 2000, "pid": 3, "run": "b", "event": "start"},
        {"at": 2120, "pid": 3, "run": "b", "event": "beat"},
        {"at": 3000, "pid": 4, "run": "b", "event": "start", "checkpoint_at": 2500},  # the checkpoint is later
        {"at": 3050, "pid": 4, "run": "b", "event": "end", "state": "done"},
        {"at": 4000, "pid": 5, "run": "c", "event": "start"},
        # a checkpoint dated after the restart (copied in, another clock): the sitting ends at the restart
        {"at": 4100, "pid": 6, "run": "c", "event": "start", "checkpoint_at": 9999},
        {"at": 4200, "pid": 6, "run": "c", "event": "end", "state": "done"},
    ])
    got = ledger_time(tmp_path)
    assert got["unended"] == 0 and got["open"] == 0
    assert abs(got["hours"] * 3600 - (240 + 100 + 500 + 50 + 200)) < 1e-9


def test_a_running_sitting_beats(tmp_path, monkeypatch):
    import time

    from tcf.experiments import sweep

    monkeypatch.setattr(sweep, "BEAT_SECONDS", 0.01)
    ledger = tmp_path / LEDGER
    with sweep._Beat(tmp_path, "r"):
        deadline = time.monotonic() + 30  # a loaded machine may run the thread late: wait for two beats
        while time.monotonic() < deadline and (not ledger.exists() or len(ledger.read_text().splitlines()) < 2):
            time.sleep(0.01)
    beats = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(beats) >= 2 and {(e["event"], e["run"]) for e in beats} == {("beat", "r")}
    after = len(beats)
    time.sleep(0.05)
    assert len(ledger.read_text().splitlines()) == after  # it stops with the run


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
    assert got["sittings"] == 2 and got["open"] == 0 and got["unended"] == 0 and got["hours"] > 0
    assert main(["sweep", str(tmp_path / "e.yaml"), "--out", str(out), "--status"]) == 0
    assert "wall time of the runs in " in capsys.readouterr().out


def test_the_report_reads_the_ledger_up_to_the_last_finished_run(tmp_path):
    events = [
        {"at": 0, "pid": 1, "run": "a", "event": "start"},
        {"at": 50, "pid": 2, "run": "b", "event": "start"},
        {"at": 100, "pid": 1, "run": "a", "event": "end", "state": "done"},
    ]
    write(tmp_path, events)
    before = ledger_time(tmp_path, to_last_done=True)
    assert abs(before["hours"] * 3600 - 100) < 1e-9 and before["runs_done"] == 1 and before["open"] == 1
    write(tmp_path, [*events, {"at": 170, "pid": 2, "run": "b", "event": "beat"},
                     {"at": 180, "pid": 1, "run": "c", "event": "start"}])
    assert ledger_time(tmp_path, to_last_done=True) == before  # a running sweep's later lines change nothing
    assert abs(ledger_time(tmp_path)["hours"] * 3600 - 170) < 1e-9
    write(tmp_path, [{"at": 0, "pid": 1, "run": "a", "event": "start"}])
    assert ledger_time(tmp_path, to_last_done=True)["since"] is None  # nothing finished yet: no wall time
