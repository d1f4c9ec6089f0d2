"""`tcf plan` passes the fine-tuning run's loss and sequence length to the planner and into its command."""

from __future__ import annotations

from tcf.cli import main


def test_plan_prints_the_loss_and_max_len_it_sized(capsys):
    assert main(["plan", "--model", "facebook/opt-125m", "--gpus", "1x80GB", "--items", "500", "--batch", "32",
                 "--loss", "bce", "--max-len", "20"]) == 0
    out = capsys.readouterr().out
    assert "model.max_len=20" in out and "train.loss=bce" in out and "train.batch_size=32" in out
