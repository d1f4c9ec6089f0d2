"""bf16 linears on a CPU without a native bf16 kernel go through the fp32 kernel with autocast's roundings
(tcf.models.precision): the same arithmetic up to the order of fp32 sums, 20x faster there."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tcf.models import precision


@pytest.fixture
def no_native(monkeypatch):
    monkeypatch.setattr(precision, "native_low_precision", lambda dtype: False)


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32))
    b = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32))
    b.load_state_dict(a.state_dict())
    return a, b


def run(model, x, ckpt=False):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = checkpoint(model, x, use_reentrant=False) if ckpt else model(x)
    y.float().pow(2).sum().backward()
    return y, x.grad, [p.grad for p in model.parameters()]


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 steps two bf16 tensors of the same sign are apart (their bit patterns' distance)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


def test_emulated_linears_match_autocasts_bf16_arithmetic_and_gradients(no_native):
    emulated, native = pair()
    assert precision.emulate_low_precision_linears(emulated, torch.bfloat16) == 2
    x = torch.randn(64, 48)
    y, gx, gp = run(emulated, x)
    with pytest.MonkeyPatch.context() as m:  # the reference: PyTorch's own bf16 kernel
        m.setattr(precision, "native_low_precision", lambda dtype: True)
        y0, gx0, gp0 = run(native, x)
    assert y.dtype == y0.dtype == torch.bfloat16
    same_sign = torch.sign(y.float()) == torch.sign(y0.float())
    assert same_sign.all() and ulps_apart(y, y0).max() <= 1  # only the fp32 sums' order differs
    assert (y == y0).float().mean() > 0.99
    torch.testing.assert_close(gx, gx0, rtol=2e-2, atol=1e-3)
    for g, g0 in zip(gp, gp0):
        assert g.dtype == torch.float32  # fp32 master weights get fp32 gradients, as under autocast
        torch.testing.assert_close(g, g0, rtol=2e-2, atol=1e-3)


def test_checkpointed_recomputation_runs_the_same_emulated_forward(no_native):
    emulated, plain = pair(1)
    precision.emulate_low_precision_linears(emulated, torch.bfloat16)
    precision.emulate_low_precision_linears(plain, torch.bfloat16)
    x = torch.randn(16, 48)
    y, gx, gp = run(emulated, x, ckpt=True)
    y0, gx0, gp0 = run(plain, x)
    assert torch.equal(y, y0) and torch.equal(gx, gx0)  # recomputed in backward exactly as the first forward
    assert all(torch.equal(g, g0) for g, g0 in zip(gp, gp0))


def test_nothing_changes_where_it_is_not_needed(monkeypatch):
    model, ref = pair(2)
    monkeypatch.setattr(precision, "native_low_precision", lambda dtype: True)
    assert precision.emulate_low_precision_linears(model, torch.bfloat16) == 0  # a CPU with the native kernel
    monkeypatch.setattr(precision, "native_low_precision", lambda dtype: False)
    assert precision.emulate_low_precision_linears(model, None) == 0  # fp32 compute
    assert precision.emulate_low_precision_linears(model, torch.float32) == 0
    assert all("forward" not in vars(m) for m in model.modules())
    precision.emulate_low_precision_linears(model, torch.bfloat16)
    x = torch.randn(8, 48)
    assert torch.equal(model(x), ref(x))  # autocast off: nn.Linear's own fp32 arithmetic, bit for bit


def test_a_long_sum_of_large_values_still_matches_within_the_order_of_fp32_sums(no_native):
    torch.manual_seed(3)
    emulated, native = nn.Linear(1536, 64), nn.Linear(1536, 64)
    native.load_state_dict(emulated.state_dict())
    precision.emulate_low_precision_linears(emulated, torch.bfloat16)
    x = torch.randn(32, 1536) * 1000
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = emulated(x)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(precision, "native_low_precision", lambda dtype: True)
            y0 = native(x)
    assert (y == y0).float().mean() > 0.99 and ulps_apart(y, y0).max() <= 2
    assert (y.float() - y0.float()).norm() / y0.float().norm() < 1e-3
