"""DeepSpeed backend: models too large for one device.

* ``zero_stage: 0`` — ``deepspeed.init_inference`` with tensor parallelism over the
  processes of a ``deepspeed`` / ``torchrun`` launch (``tp_size`` = WORLD_SIZE).  Kernel
  injection is off: it is CUDA-only and changes numerics; on CPU it is the only mode
  DeepSpeed supports anyway.
* ``zero_stage: 3`` — ZeRO-3 parameter partitioning: every process holds 1/N of the
  weights (optionally offloaded to CPU memory), gathered layer by layer during the
  forward pass.  Under ZeRO-3 every process must run the same number of forward
  passes, so each process runs the same shard list (no sharding of items across
  processes) and the partitioning buys memory, not speed.

Tokenisation, batching, pooling and layer-range loading are the hf backend's.
Install with ``DS_BUILD_OPS=0 pip install 'tcf[deepspeed]'``.
"""

from __future__ import annotations

import os

from tcf.encoders.base import EncoderSpec
from tcf.encoders.hf import HFEncoder, torch_dtype
from tcf.encoders.quiet import _CPU_NOTE, import_deepspeed, quiet_deepspeed  # noqa: F401 - re-exported
from tcf.errors import ConfigError


def zero3_config(offload: bool) -> dict:
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0}
    if offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero, "bf16": {"enabled": False},
            "fp16": {"enabled": False}}


def _ensure_dist_env() -> None:
    """A single process (no launcher) still needs the rendezvous variables DeepSpeed reads; its port is one the
    system has free (a fixed one would fail for the second of two such processes on one machine)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def free_port() -> int:
    """A TCP port nothing listens on now (bound to port 0, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeepSpeedEncoder(HFEncoder):
    def __init__(self, spec: EncoderSpec):
        if spec.zero_stage not in (0, 3):
            raise ConfigError(f"encoder.zero_stage must be 0 (init_inference) or 3 (ZeRO-3), got {spec.zero_stage}")
        if spec.quantization or spec.device_map:
            raise ConfigError("backend deepspeed partitions the model itself: drop quantization / device_map")
        _ensure_dist_env()
        super().__init__(spec)

    def _load_model(self, source: str, load: dict):
        if self.spec.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self.ds_config = zero3_config(offload=self.spec.offload)
            # alive while from_pretrained runs, it makes transformers partition at load time; released
            # afterwards so that later, unrelated loads in this process are not partitioned too
            hf_ds_config = HfDeepSpeedConfig(self.ds_config)
            try:
                return super()._load_model(source, load)
            finally:
                del hf_ds_config
        return super()._load_model(source, load)

    def _place(self, model):
        deepspeed = import_deepspeed()
        from deepspeed.accelerator import get_accelerator

        self.device = get_accelerator().current_device_name()
        if self.spec.zero_stage == 3:
            engine, *_ = deepspeed.initialize(model=model, config=self.ds_config)
            engine.eval()
            return engine
        world = int(os.environ.get("WORLD_SIZE", 1))
        return deepspeed.init_inference(model, dtype=torch_dtype(self.spec.dtype), replace_with_kernel_inject=False,
                                        tensor_parallel={"tp_size": world})
