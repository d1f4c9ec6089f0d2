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


def init_group(backend: str, **kwargs) -> None:
    """``torch.distributed.init_process_group``, and its end registered for interpreter exit: a gloo group
    still alive when Python finalises can abort the process (SIGABRT, "terminate called without an active
    exception") after its work is done, and torchrun then reports a finished run as failed.  Whoever ends
    the group earlier (the training loop does) leaves the exit handler nothing to do."""
    import atexit

    import torch.distributed as dist

    dist.init_process_group(backend, **kwargs)
    atexit.register(end_group)


def end_group() -> None:
    """Collect first, so objects holding the group (a DDP reducer in a reference cycle) let go, then destroy
    the group if one is still up."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
