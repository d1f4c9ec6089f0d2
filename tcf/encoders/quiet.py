"""Loading heavy libraries without their noise: transformers' load reports and progress bars, DeepSpeed's
import-time lines and warnings.  Only what a user cannot act on is silenced; errors still raise.

Its own module (imported by the HF and DeepSpeed encoders and by the zoo's conversions) so that
silencing a load needs neither encoder.
"""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars while loading (errors still raise)."""
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


class _CpuFallbackNote(logging.Filter):
    """Drops the one line DeepSpeed logs (to stdout) when it finds no GPU and settles on the CPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


_CPU_NOTE = _CpuFallbackNote()


@contextlib.contextmanager
def quiet_deepspeed():
    """Keep DeepSpeed's import-time noise off the terminal while it is imported here, or by transformers /
    accelerate (``save_pretrained`` imports it whenever it is installed).

    On a machine without a GPU every import logs "Setting accelerator to CPU ..." to stdout, and
    DeepSpeed releases warn (FutureWarning, DeprecationWarning) about the torch APIs they call: nothing
    a user can act on.  Only those go: exceptions still raise, and DeepSpeed's own warnings and errors
    while it runs still print.
    """
    logging.getLogger("DeepSpeed").addFilter(_CPU_NOTE)  # the logger DeepSpeed creates at import; added once
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"deepspeed(\.|$)")
        yield


def import_deepspeed():
    """``import deepspeed`` without its import-time noise: every place tcf chooses DeepSpeed imports it so."""
    with quiet_deepspeed():
        import deepspeed
    return deepspeed


class _NoHubKernel(logging.Filter):
    """Drops bitsandbytes' import-time warning that it could not fetch a faster CPU 4-bit kernel from a model hub
    (``kernels-community``): on a machine without the hub nothing can act on it, and the CPU fallback is used."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "from kernels-community" not in record.getMessage()


_NO_HUB_KERNEL = _NoHubKernel()


def quiet_bitsandbytes() -> None:
    """Before bitsandbytes is imported (peft imports it for LoRA): keep its hub-kernel warning off the terminal."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_HUB_KERNEL)

