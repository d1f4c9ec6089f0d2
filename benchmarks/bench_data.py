"""How fast `tcf data prepare` turns raw files into a dataset, and at what peak memory.

Writes a random interaction CSV of N rows (and its item table) to a temporary folder,
prepares it with the `table` source in a child process, and prints a table:
rows/s for reading + checking + writing, and the child's peak RSS.  Also times the
real ml-100k from the recbole package.

    .venv/bin/python benchmarks/bench_data.py --rows 1000000 3000000
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import resource, sys, time
from tcf.data import prepare, PrepareOptions
src, out = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if src == "ml-100k":
    ds = prepare("ml-100k", None, out)
else:
    ds = prepare("table", src, out, PrepareOptions(min_user_interactions=3), {
        "interactions": "inter.csv", "items": "items.csv", "user": "user", "item": "item", "time": "ts",
        "text": ["title"]})
dt = time.perf_counter() - t
print(ds.meta["stats"]["raw_interactions"], dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_table(folder: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_items, n_users = max(rows // 50, 100), max(rows // 20, 10)
    users = rng.integers(0, n_users, rows)
    items = (rng.zipf(1.3, rows) - 1) % n_items
    ts = rng.integers(1_500_000_000, 1_600_000_000, rows)
    with open(folder / "inter.csv", "w") as f:
        f.write("user,item,ts\n")
        for chunk in range(0, rows, 500_000):
            s = slice(chunk, chunk + 500_000)
            f.write("".join(f"u{u},i{i},{t}\n" for u, i, t in zip(users[s], items[s], ts[s])))
    with open(folder / "items.csv", "w") as f:
        f.write("item,title\n")
        f.write("".join(f"i{i},Item number {i} with a short title\n" for i in range(n_items)))


def run(src: str, out: str) -> tuple[int, float, int]:
    r = subprocess.run([sys.executable, "-c", CHILD, src, out], capture_output=True, text=True, check=True)
    n, dt, rss = r.stdout.split()
    return int(n), float(dt), int(rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        n, dt, rss = run("ml-100k", f"{tmp}/ml")
        results.append(("ml-100k (recbole copy)", n, dt, rss))
        for rows in args.rows:
            folder = Path(tmp) / f"t{rows}"
            folder.mkdir()
            t = time.perf_counter()
            write_table(folder, rows)
            print(f"wrote {rows:,} rows in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            n, dt, rss = run(str(folder), f"{tmp}/out{rows}")
            results.append((f"table csv, {rows:,} rows", n, dt, rss))
    print("| input | interactions | prepare wall (s) | rows/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, dt, rss in results:
        print(f"| {name} | {n:,} | {dt:.2f} | {n / dt:,.0f} | {rss / 1024:,.0f} |")
    print(f"\n(python {sys.version.split()[0]}, {resource.getpagesize()} B pages)", file=sys.stderr)


if __name__ == "__main__":
    main()
