"""Low-precision matmuls on CPUs without a native kernel for them.

Under ``torch.autocast(cpu, bf16)`` a linear map casts its input, weight and bias to bf16 and multiplies
them with fp32 accumulation, rounding the output to bf16.  CPUs with AVX512-BF16 or AMX do that in
oneDNN; on the others (AVX2 only, e.g. many AMD EPYC and older Intel parts) PyTorch falls back to a
reference GEMM that is about 20x slower than fp32 (measured here: a 512x384 @ 384x1536 product, 0.96 s
in bf16 against 0.047 s in fp32), which makes a bf16 fine-tuning epoch take half an hour instead of two
minutes.  :func:`emulate_low_precision_linears` gives each ``nn.Linear`` of a model a forward that, on
such a CPU and under such autocast, does the same arithmetic through the fp32 kernel: the operands are
rounded to the low precision exactly as autocast rounds them, then widened (exactly: every bf16 / fp16
value is an fp32 value), multiplied with fp32 accumulation, and the output rounded to the low precision
once.  The products of two bf16 / fp16 values are exact in fp32, so the result differs from a native
kernel's only in the order of its fp32 sums (as two native kernels on two CPUs do): typically at most 1-2
bf16 ulps on a few outputs in 10,000, more on the rare gradient element that sums near-cancelling terms.
Only ``nn.Linear`` itself is changed: attention products, GPT-2's ``Conv1D`` and ``nn.Linear`` subclasses
keep PyTorch's kernels (correct, only slower on such a CPU).  Backward goes
through the same casts, so input and weight gradients are rounded to the low precision where
autocast's are.  Elsewhere (CUDA, fp32, a CPU with the native kernel, autocast off) the forward is
``nn.Linear``'s own.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def native_low_precision(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` (bf16 / fp16) natively (oneDNN), not through the slow fallback."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    if probe is None:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: leave PyTorch's own kernels in place


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    low = torch.get_autocast_dtype("cpu")
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or native_low_precision(low):
        return F.linear(x, self.weight, self.bias)
    with torch.autocast("cpu", enabled=False):
        bias = None if self.bias is None else self.bias.to(low).float()
        return F.linear(x.to(low).float(), self.weight.to(low).float(), bias).to(low)


def emulate_low_precision_linears(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Give every ``nn.Linear`` of ``model`` the fp32-kernel forward above when this CPU lacks a native
    ``dtype`` kernel (nothing for fp32 / None or a CPU that has one) -> how many were changed.  The forward
    is the module's own, so activation checkpointing recomputes it the same way."""
    if dtype in (None, torch.float32) or native_low_precision(dtype):
        return 0
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n
