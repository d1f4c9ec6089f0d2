"""benchmarks/gpu_bundle.py: the planner splits the bundle into parts that each travel in one device call.

The fast tests use fake wheels and sizes (no network); the slow one builds the real bundle (PyPI
downloads, the fp16 MiniLM), installs each part the way the node does, and runs gpu_check with it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bundle  # noqa: E402
from gpu_bundle import DoesNotFit, Item, MiB, commands, pack, part_limit  # noqa: E402


def fake(name: str, mib: float, kind: str = "wheel") -> Item:
    return Item(name, kind, int(mib * MiB))


def test_pack_fits_every_part_and_places_each_item_once():
    items = [fake("bitsandbytes.whl", 41.1), fake("faiss_cpu.whl", 18.0), fake("minilm-l6-fp16", 44.0, "model"),
             fake("deepspeed.whl", 2.1), fake("pydantic_core.whl", 2.2), fake("pydantic.whl", 0.5),
             fake("tiny-opt", 0.6, "model"), fake("hjson.whl", 0.05)]
    limit = part_limit(int(10.6 * MiB), 60)
    assert abs(limit - (64 - 10.6 - 2) * MiB) <= 1  # the tree, not the 60 MiB, binds
    parts = pack(items, limit)
    assert all(p.size <= limit for p in parts)
    placed = [i.name for p in parts for i in p.items]
    assert sorted(placed) == sorted(i.name for i in items)  # each exactly once
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    # bitsandbytes (41) and MiniLM (44) cannot share a call, nor faiss (18) join either: three calls
    assert len(parts) == 3
    assert parts[0].items[0].name == "minilm-l6-fp16"  # largest first
    # first fit: the small wheels fill the first part that has room
    assert "deepspeed.whl" in [i.name for i in parts[0].items]


def test_pack_limit_from_the_flag_when_the_tree_is_small():
    assert part_limit(1 * MiB, 60) == 60 * MiB
    parts = pack([fake("a", 30), fake("b", 30), fake("c", 30)], part_limit(1 * MiB, 60))
    assert [len(p.items) for p in parts] == [2, 1]  # 60 MiB fits exactly, 90 does not


def test_an_item_over_the_limit_is_named():
    with pytest.raises(DoesNotFit, match=r"vllm\.whl \(320\.8 MiB\)"):
        pack([fake("vllm.whl", 320.8), fake("x.whl", 1)], 52 * MiB)


def test_a_model_over_the_limit_travels_in_pieces_that_merge_back_into_the_same_model(tmp_path, tiny_model):
    """The tree each call carries grows with committed results: MiniLM-L6 in fp16 (44 MiB) stopped fitting in
    the 43.6 MiB left, so a model too large for one call is split into safetensors shards, each piece under the
    limit, that the node's `cp -r` merges into one loadable folder."""
    import shutil

    import torch
    from transformers import AutoModel

    folder = tmp_path / "model"
    AutoModel.from_pretrained(str(tiny_model)).save_pretrained(folder)
    shutil.copy2(next(tiny_model.glob("tokenizer*")), folder)
    size = gpu_bundle.folder_bytes(folder)
    limit = size // 2
    pieces = gpu_bundle.split_model(folder, limit, tmp_path / "split")
    assert len(pieces) >= 2 and all(gpu_bundle.folder_bytes(d) <= limit for d in pieces)
    assert {d.name for d in pieces} == {"model"}
    merged = tmp_path / "node" / "model"
    for d in pieces:  # in any order, as the parts arrive
        shutil.copytree(d, merged, dirs_exist_ok=True)
    a, b = AutoModel.from_pretrained(str(folder)), AutoModel.from_pretrained(str(merged))
    assert not (merged / "model.safetensors").exists() and (merged / "model.safetensors.index.json").is_file()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(DoesNotFit, match="tensor"):
        gpu_bundle.split_model(folder, 1024, tmp_path / "tiny-limit")


def test_commands_install_each_part_and_the_last_runs_the_check():
    parts = pack([fake("w1.whl", 40), fake("m", 40, "model"), fake("w2.whl", 5)], 50 * MiB)
    cmds = commands(parts)
    assert len(cmds) == len(parts) == 2
    for p, c in zip(parts, cmds):
        d = f".gpu_bundle/part{p.number}"
        assert f"touch .gpu_site/part{p.number}.ok" in c and f"cp {d}/manifest.json .gpu_site/" in c
        has_wheels = any(i.kind == "wheel" for i in p.items)
        assert ("--no-index --no-deps" in c and f"--target .gpu_site/site {d}/wheels/*.whl" in c) == has_wheels
        assert (f"cp -r {d}/models/. .gpu_site/models/" in c) == any(i.kind == "model" for i in p.items)
    assert "gpu_check.py --bundle .gpu_site --out $OUT/gpu_check.json" in cmds[-1]
    assert all("gpu_check.py" not in c for c in cmds[:-1])
    assert all(len(c) <= 2000 for c in cmds)  # the device tool's limit on a command


def _wheel(folder: Path, name: str, files: dict[str, bytes], requires: list[str] = ()) -> Path:
    dist = f"{name}-1.0.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {**files, f"{dist}/METADATA": meta.encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr(f"{dist}/RECORD", record)
    return path


def test_requires_dist_keeps_what_applies_on_the_node(tmp_path):
    whl = _wheel(tmp_path, "demo", {"demo/__init__.py": b""},
                 ["numpy>=1.17", "pytest; extra == 'test'", "tzdata; platform_system == 'Windows'",
                  "backport; python_version < '3.11'", "uvloop; sys_platform == 'linux'"])
    assert gpu_bundle.requires_dist(whl) == ["numpy", "uvloop"]


def test_what_the_node_lacks():
    assert not gpu_bundle.needed("numpy") and not gpu_bundle.needed("PyYAML") and not gpu_bundle.needed("torch")
    assert gpu_bundle.needed("faiss-cpu") and gpu_bundle.needed("bitsandbytes") and gpu_bundle.needed("pydantic_core")
    assert gpu_bundle.needed("typing_extensions")  # pydantic needs a newer one than the node may hold
    assert {"faiss-cpu", "bitsandbytes", "deepspeed", "gguf"} <= set(map(gpu_bundle.canon, gpu_bundle.roots()))


def test_slim_bitsandbytes_keeps_cpu_and_cuda13_and_installs(tmp_path):
    libs = {f"bitsandbytes/libbitsandbytes_{v}.so": b"x" * 1000
            for v in ("cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2025")}
    whl = _wheel(tmp_path, "bitsandbytes", {"bitsandbytes/__init__.py": b"", **libs})
    slim = gpu_bundle.slim_bitsandbytes(whl, tmp_path / "slim")
    with zipfile.ZipFile(slim) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-1.0.dist-info/RECORD").decode()
    kept = {n for n in names if n.endswith(".so")}
    assert kept == {f"bitsandbytes/libbitsandbytes_{v}.so" for v in ("cpu", "cuda130", "cuda132")}
    assert {line.split(",")[0] for line in record.splitlines()} == names  # RECORD lists exactly what is there
    # installs the way the node installs a part
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(tmp_path / "site"), str(slim)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "site" / "bitsandbytes").glob("*.so")) == [
        "libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"]


def test_gpu_check_uses_an_installed_bundle(tmp_path):
    """gpu_check --bundle: the site on the path, the fp16 MiniLM as the model, the manifest's reasons in the skips."""
    site = tmp_path / "gpu_site"
    (site / "site" / "bundled_pkg").mkdir(parents=True)
    (site / "site" / "bundled_pkg" / "__init__.py").write_text("")
    (site / "models" / "minilm-l6-fp16").mkdir(parents=True)
    (site / "models" / "minilm-l6-fp16" / "config.json").write_text("{}")
    manifest = {"parts": 2, "not_carried": {"faiss-gpu": "too big (129 MiB)", "vllm": "too big (320 MiB)"}}
    (site / "manifest.json").write_text(json.dumps(manifest))
    (site / "part1.ok").touch()  # part 2 missing: named, not fatal
    import gpu_check

    try:
        info = gpu_check.use_bundle(site)
        assert str(site / "site") in sys.path and str(site / "site") in os.environ["PYTHONPATH"]
        assert info["missing_parts"] == [2] and info["models"] == ["minilm-l6-fp16"]
        assert gpu_check.bundle_model("minilm-l6-fp16") == site / "models" / "minilm-l6-fp16"
        assert gpu_check.bundle_model("tiny-opt") is None
        row = gpu_check.skipped_without_gpu("faiss-gpu")
        assert row["status"] == "skipped" and "too big (129 MiB)" in row["detail"]
        assert "too big (320 MiB)" in gpu_check.skipped_without_gpu("vLLM embeddings")["detail"]
    finally:
        sys.path.remove(str(site / "site"))
        gpu_check.BUNDLE.clear()
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].replace(str(site / "site"), "").strip(os.pathsep)


def _online() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


PY312 = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
         *[f for p in gpu_bundle.PLATFORMS for f in ("--platform", p)]]


@pytest.mark.slow
def test_real_bundle_installs_part_by_part_and_gpu_check_uses_it(tmp_path):
    if not _online():
        pytest.skip("no network: the bundle downloads its wheels from PyPI")
    out = tmp_path / "bundle"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bundle.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads((out / "part1" / "manifest.json").read_text())
    assert {"faiss-gpu", "vllm"} == set(manifest["not_carried"])
    tree = gpu_bundle.tree_bytes()
    site = tmp_path / "gpu_site"
    for n in range(1, manifest["parts"] + 1):
        part = out / f"part{n}"
        assert gpu_bundle.folder_bytes(part) + tree <= gpu_bundle.CALL_LIMIT  # one call carries it beside the tree
        assert gpu_bundle.folder_bytes(part) <= 60 * MiB
        wheels = sorted(map(str, part.glob("wheels/*.whl")))
        if wheels:  # the node's install line, with the node's Python named (the wheels are for CPython 3.12)
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                "--no-cache-dir", "--upgrade", *PY312, "--target", str(site / "site"), *wheels],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
        if (part / "models").is_dir():
            (site / "models").mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-r", f"{part}/models/.", f"{site}/models/"], check=True)
        (site / "manifest.json").write_text((part / "manifest.json").read_text())
        (site / f"part{n}.ok").touch()
    names = {d.name.split("-")[0] for d in (site / "site").glob("*.dist-info")}
    assert {"bitsandbytes", "faiss_cpu", "deepspeed", "pydantic", "pydantic_core", "hjson", "gguf"} <= names
    assert sum(f.stat().st_size for f in (site / "models" / "minilm-l6-fp16").glob("*.safetensors")) < 50 * MiB
    # what imports on this Python (pure and abi3 wheels) comes from the bundle
    code = "import bitsandbytes, faiss, gguf, hjson; print(bitsandbytes.__file__, faiss.__file__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(site / "site"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.count(str(site / "site")) == 2, r.stderr[-2000:]
    # and gpu_check with it, on this CPU: every check skipped, faiss-gpu and vLLM with the bundle's reason
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--bundle", str(site),
                        "--out", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((tmp_path / "g.json").read_text())
    assert record["bundle"]["missing_parts"] == [] and "minilm-l6-fp16" in record["bundle"]["models"]
    rows = {c["path"]: c for c in record["checks"]}
    assert all(c["status"] == "skipped" for c in rows.values())
    assert "faiss-gpu 1." in rows["faiss-gpu"]["detail"] and "vllm 0." in rows["vLLM embeddings"]["detail"]
