"""The one length-sorted, halve-on-out-of-memory batching (tcf.encoders.hf_load.by_length), shared by the HF
encoder and the HF chat backend."""

from __future__ import annotations

import types

import pytest
import torch

from tcf.encoders.hf_load import by_length


def test_longest_first_every_index_once_and_the_lowered_size_kept():
    owner = types.SimpleNamespace(batch_size=4)
    lengths = [3, 9, 1, 7, 5, 2, 8]
    seen = []

    def step(idx):
        if len(idx) > 2:
            raise torch.OutOfMemoryError("simulated")
        seen.append(list(idx))

    by_length(owner, lengths, step)
    assert owner.batch_size == 2
    assert [i for batch in seen for i in batch] == sorted(range(len(lengths)), key=lambda i: -lengths[i])
    by_length(owner, lengths, lambda idx: seen.append(len(idx)))  # later calls start at the lowered size
    assert max(x for x in seen if isinstance(x, int)) == 2


def test_out_of_memory_at_one_is_raised():
    owner = types.SimpleNamespace(batch_size=2)
    with pytest.raises(torch.OutOfMemoryError):
        by_length(owner, [1, 2], lambda idx: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    assert owner.batch_size == 1
