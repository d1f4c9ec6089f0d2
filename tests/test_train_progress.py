"""A training run says up front how long it may take and shows progress inside each epoch."""

from __future__ import annotations

from tcf.experiments.config import load_config
from tcf.train import loop


def test_start_line_and_steps_within_an_epoch(tiny_dataset, tmp_path, capsys):
    cfg = load_config(None, [f"data.dataset={tiny_dataset.path}", "model.dim=8", "model.max_len=4", "train.epochs=2",
                             "train.patience=7", "train.batch_size=4", "eval.bootstrap=0", "name=p"])
    loop.train(cfg, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    windows = len(loop.SeqData(tiny_dataset).windows(4))
    steps = -(-windows // 4)
    assert f"p: up to 2 epochs of {steps} steps ({windows} windows, batch 4); stops after 7 epochs" in err
    assert f"epoch 1/2: {steps}/{steps} steps" in err and "windows/s" in err  # the step bar reached the end
    assert "epoch 2: loss" in err and "valid ndcg@10" in err
