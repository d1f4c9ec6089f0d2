"""Repeat targets (the target is already in the user's history): the masking rule is named, the
label never decides what is masked by default, and repeats are counted and sliced in every report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcf.errors import ConfigError
from tcf.eval.ranking import evaluate, report
from tcf.experiments.config import EvalConfig, load_config
from tcf.train.data import SeqData

# user -> items in time order; test target = last, valid target = second last
SEQS = {1: [1, 2, 3, 1],  # test target 1 is a repeat; valid target 3 is not
        2: [2, 4, 5, 6],  # no repeats
        3: [3, 5, 3, 5],  # test target 5 and valid target 3 are repeats
        4: [1, 6, 2, 4]}  # no repeats
N_ITEMS = 6


def tiny_data() -> SeqData:
    """A SeqData over SEQS without a Dataset on disk (only what evaluation and reports read)."""
    data = SeqData.__new__(SeqData)
    data.n_items, data.n_users = N_ITEMS, len(SEQS)
    data.seqs = [np.zeros(0, dtype=np.int64)] + [np.asarray(SEQS[u], dtype=np.int64) for u in sorted(SEQS)]
    data.users = np.arange(1, data.n_users + 1)
    data.train_counts = np.ones(N_ITEMS + 1, dtype=np.int64)
    return data


class HistoryLover(torch.nn.Module):
    """Scores an item 1 if the user has seen it, plus a small preference rising with the item id:
    the model that repeat targets reward when the mask looks at the label."""

    def states(self, users, inputs):  # [B, L] -> [B, 1, N + 2]
        bag = torch.zeros(len(inputs), N_ITEMS + 2).scatter_(1, inputs, 1.0)
        bag[:, 0], bag[:, -1] = 0.0, 1.0
        return bag[:, None, :]

    def all_items(self):  # [N + 1, N + 2]: one-hot rows, the last column the preference
        items = torch.eye(N_ITEMS + 1, N_ITEMS + 2)
        items[:, -1] = torch.linspace(0.0, 0.1, N_ITEMS + 1)
        return items


def run(rule, ranker="matmul", split="test"):
    return evaluate(HistoryLover(), tiny_data(), split, ks=(1, 20), max_len=10, mask_history=rule, ranker=ranker)


@pytest.mark.parametrize("ranker", ["matmul", "faiss"])
def test_repeat_targets_by_rule(ranker):
    hr1 = {rule: run(rule, ranker).per_user["hr@1"] for rule in ("all", "all_but_target", "none")}
    # users 1 and 3 repeat: exempting the target from the mask leaves it alone among the seen items
    np.testing.assert_allclose(hr1["all_but_target"], [1, 1, 1, 0])
    # masking all history: a repeat target can never be recommended, at any K (K=20 > the 6 items)
    np.testing.assert_allclose(hr1["all"], [0, 1, 0, 0])
    np.testing.assert_allclose(run("all", ranker).per_user["hr@20"], [0, 1, 0, 1])
    # no mask: seen items compete with each other (user 1's item 1 has the lowest preference of {1, 2, 3})
    np.testing.assert_allclose(hr1["none"], [0, 0, 1, 0])
    np.testing.assert_allclose(run("none", ranker).per_user["mrr@20"][0], 1 / 3)
    # the old booleans still work: true is "all", false is "none"
    np.testing.assert_allclose(run(True, ranker).per_user["hr@1"], hr1["all"])
    np.testing.assert_allclose(run(False, ranker).per_user["hr@1"], hr1["none"])


def test_report_counts_and_slices_repeats():
    data = tiny_data()
    out = report(run("all_but_target"), data, bootstrap=0, cold_max_count=0, history_buckets=[])
    assert out["n_repeat_targets"] == 2 and out["mask_history"] == "all_but_target"
    repeat, fresh = out["slices"]["repeat"], out["slices"]["non-repeat"]
    assert (repeat["n_users"], fresh["n_users"]) == (2, 2)
    assert repeat["metrics"]["hr@1"] == 1.0 and fresh["metrics"]["hr@1"] == 0.5
    valid = report(run("all", split="valid"), data, bootstrap=0, cold_max_count=0, history_buckets=[])
    assert valid["n_repeat_targets"] == 1 and valid["slices"]["repeat"]["metrics"]["hr@1"] == 0.0
    assert valid["mask_history"] == "all"


def test_mask_history_setting():
    assert EvalConfig().mask_history == "all"
    for given, rule in ((True, "all"), (False, "none"), ("true", "all"), ("False", "none"),
                        ("all_but_target", "all_but_target"), ("none", "none")):
        assert EvalConfig(mask_history=given).mask_history == rule
    assert load_config(None, ["eval.mask_history=true"]).eval.mask_history == "all"
    assert load_config("experiments/ml100k-sasrec-id.yaml").eval.mask_history == "all"  # YAML `true`
    with pytest.raises(ConfigError, match="all, all_but_target, none"):
        EvalConfig(mask_history="some")
    with pytest.raises(ConfigError, match="eval.bootstrap"):
        EvalConfig(bootstrap=-1)
