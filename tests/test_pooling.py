"""Pooling against hand-computed values, under right and left padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcf.encoders.pooling import l2_normalize, pool

# two texts: 3 real tokens and 1 real token, T = 4, D = 2
STATES_RIGHT = torch.tensor([[[1., 2.], [3., 4.], [5., 6.], [9., 9.]],
                             [[7., 8.], [9., 9.], [9., 9.], [9., 9.]]])
MASK_RIGHT = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
STATES_LEFT = torch.tensor([[[9., 9.], [1., 2.], [3., 4.], [5., 6.]],
                            [[9., 9.], [9., 9.], [9., 9.], [7., 8.]]])
MASK_LEFT = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])


@pytest.mark.parametrize("states, mask", [(STATES_RIGHT, MASK_RIGHT), (STATES_LEFT, MASK_LEFT)])
def test_pooling_by_hand(states, mask):
    assert pool(states, mask, "mean").tolist() == [[3.0, 4.0], [7.0, 8.0]]
    assert pool(states, mask, "last").tolist() == [[5.0, 6.0], [7.0, 8.0]]
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0], [7.0, 8.0]]


def test_pooling_is_fp32_and_side_effect_free():
    states = STATES_RIGHT.to(torch.bfloat16)
    before = states.clone()
    out = pool(states, MASK_RIGHT, "mean")
    assert out.dtype == torch.float32
    assert torch.equal(states, before)


def test_unknown_pooling():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(STATES_RIGHT, MASK_RIGHT, "max")


def test_l2_normalize_torch_and_numpy():
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(l2_normalize(v), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert np.allclose(l2_normalize(v.numpy()), [[0.6, 0.8], [0.0, 0.0]])
