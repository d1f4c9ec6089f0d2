"""What reaches a user's terminal: no DeepSpeed import noise on commands that do not use it, and
none of it where tcf (or transformers, on tcf's behalf) imports DeepSpeed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import pytest

NOISE = ("DeepSpeed", "deepspeed", "Setting accelerator", "FutureWarning")


def run(*code_or_args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=300)


def test_help_and_a_plain_command_print_no_deepspeed_lines():
    for args in (["--help"], ["data", "sources"]):
        r = run("-m", "tcf", *args)
        assert r.returncode == 0 and not [n for n in NOISE if n in r.stderr], r.stderr


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
def test_deepspeed_imported_on_tcfs_behalf_is_silent():
    """transformers' save_pretrained imports DeepSpeed through accelerate whenever it is installed
    (tcf converts GGUF weights with it); DeepSpeed then logs 'Setting accelerator to CPU' to stdout."""
    r = run("-c", "import sys, torch\n"
                  "from tcf.encoders.ds import quiet_deepspeed\n"
                  "from accelerate.utils.other import extract_model_from_parallel\n"
                  "with quiet_deepspeed():\n"
                  "    extract_model_from_parallel(torch.nn.Linear(1, 1))\n"
                  "assert 'deepspeed' in sys.modules\n")
    assert r.returncode == 0, r.stderr
    assert not [n for n in NOISE if n in r.stdout + r.stderr], r.stdout + r.stderr


def test_only_deepspeeds_own_deprecation_warnings_are_dropped():
    from tcf.encoders.ds import quiet_deepspeed

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_deepspeed():
            warnings.warn_explicit("torch.cuda.amp.custom_fwd is deprecated", FutureWarning, "x.py", 1,
                                   module="deepspeed.runtime.zero.linear")
            warnings.warn_explicit("a real one", FutureWarning, "y.py", 1, module="tcf.train.loop")
            warnings.warn_explicit("not a deprecation", UserWarning, "x.py", 2, module="deepspeed.runtime")
    assert sorted(str(w.message) for w in seen) == ["a real one", "not a deprecation"]


def test_lora_does_not_print_bitsandbytes_hub_kernel_warning():
    """peft imports bitsandbytes, whose CPU backend tries to fetch a kernel from a hub and warns when it can't."""
    import subprocess
    import sys

    code = ("import torch\nfrom tcf.errors import ConfigError\nfrom tcf.models.lm_tower import add_lora\n"
            "try:\n    add_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), 2, 4, 0.0)\n"
            "except ConfigError:\n    pass\nimport sys\nprint('peft' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert r.stdout.strip() == "True"  # peft (and with it bitsandbytes) was imported
    assert "kernels-community" not in r.stderr + r.stdout
