"""The text towers' adapters: tcf's MLP and the TCF reference's projection (Linear -> GELU per layer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tcf.errors import ConfigError
from tcf.experiments.config import load_config
from tcf.models.towers import adapter


def kinds(m: nn.Module) -> list[str]:
    return [type(x).__name__ for x in m]


def test_adapter_styles():
    assert kinds(adapter(8, 4, 1, 0.2)) == ["Linear"]
    assert kinds(adapter(8, 4, 2, 0.2)) == ["Linear", "GELU", "Dropout", "Linear"]
    assert kinds(adapter(8, 4, 1, 0.2, "tcf")) == ["Linear", "GELU"]
    assert kinds(adapter(8, 4, 2, 0.2, "tcf")) == ["Linear", "GELU", "Dropout", "Linear", "GELU"]
    out = adapter(8, 4, 1, 0.0, "tcf")(torch.randn(100, 8))
    assert out.min() >= -0.1701  # GELU's minimum: the output is activated, as in the reference


def test_unknown_adapter_is_named():
    with pytest.raises(ConfigError, match="model.adapter must be mlp or tcf"):
        load_config(None, ["model.adapter=deep"])
