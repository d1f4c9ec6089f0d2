"""Where a model runs and in which precision: the names a config uses, mapped once for every backend."""

from __future__ import annotations

from tcf.errors import ConfigError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # config name -> torch / vLLM name
VLLM_DTYPES = DTYPES


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def pick_device(name: str, setting: str = "encoder.device") -> str:
    """``auto`` -> cuda when there is one, else cpu; a CUDA device asked for on a machine without one is
    refused here, naming ``setting``, instead of failing inside the first tensor move."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{setting} is {name!r} but no CUDA device is available")
    return name
