"""Reading delimited and parquet files with errors that name the file, line and field.

Every raw table is read into a ``pandas.DataFrame`` of strings plus a ``_line``
column holding the 1-based line number of each record in its file, so that later
checks (unknown item, empty text, duplicate id) can point at the exact line.
"""

from __future__ import annotations

import csv
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcf.errors import DataError

LINE = "_line"  # column holding each record's 1-based line number in its file
_CHUNK = 1_000_000  # records converted to compact string columns at a time
_SEP_NAMES = {"\t": "tab", ",": "comma", "|": "pipe", ";": "semicolon", " ": "space"}

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class TableSpec:
    """How one raw file is laid out."""

    sep: str = "\t"
    header: bool = True  # first line names the columns
    names: Sequence[str] | None = None  # column names when there is no header
    quoting: bool = False  # honour "double quotes" (CSV); TSV files are read verbatim
    encoding: str = "utf-8"
    strip_types: bool = False  # RecBole atomic headers: "item_id:token" -> "item_id"


@dataclass(frozen=True)
class ZipMember:
    """A file inside a zip archive, read without unpacking it to disk."""

    archive: Path
    member: str

    def __str__(self) -> str:
        return f"{self.archive}[{self.member}]"

    def open(self):
        return zipfile.ZipFile(self.archive).open(self.member)


FileRef = Path | ZipMember


def require_file(path: str | Path | ZipMember) -> FileRef:
    if isinstance(path, ZipMember):
        try:
            info = zipfile.ZipFile(path.archive).getinfo(path.member)
        except KeyError:
            raise DataError(path, "file not found in the archive") from None
        except zipfile.BadZipFile as e:
            raise DataError(path.archive, f"not a readable zip archive ({e})") from None
        if info.file_size == 0:
            raise DataError(path, "file is empty")
        return path
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "is not a file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    return path


def _decoded_lines(path: FileRef, encoding: str) -> Iterator[str]:
    """Yield the file's lines decoded, raising DataError at the first undecodable one."""
    with (path.open() if isinstance(path, ZipMember) else open(path, "rb")) as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(
                    path, f"invalid {encoding.upper()} at byte {e.start} of the line ({raw[e.start:e.start + 4]!r}); "
                    "re-encode the file as UTF-8", line=number) from None


def _sep_hint(first_line: str, sep: str) -> str:
    counts = {s: first_line.count(s) for s in _SEP_NAMES if s != sep}
    other = max(counts, key=counts.get)
    if counts[other] > 0 and first_line.count(sep) == 0:
        return f"; the line has no {_SEP_NAMES.get(sep, repr(sep))} but {counts[other]} {_SEP_NAMES[other]}(s): wrong separator?"
    return ""


def read_table(path: str | Path | ZipMember, spec: TableSpec, *, required: Sequence[str] = (),
               usecols: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a delimited text file into string columns plus ``_line``.

    Checks, each failing with a :class:`DataError` that names file, line and field:
    the file exists and is not empty, it decodes, every record has the header's
    number of fields, and every name in ``required`` is a column.
    Blank lines are skipped.  ``usecols`` keeps only those columns (memory).
    """
    path = require_file(path)
    lines = _decoded_lines(path, spec.encoding)
    reader = csv.reader(lines, delimiter=spec.sep, quoting=csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE,
                        strict=spec.quoting)
    try:
        header, header_line = _read_header(reader, path, spec)
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise DataError(path, f"column names repeat in the header: {dupes}", line=header_line or None)
        missing = [c for c in required if c not in header]
        if missing:
            hint = _sep_hint(spec.sep.join(header), spec.sep) if len(header) == 1 else ""
            raise DataError(path, f"column not found (the columns are {header}){hint}",
                            line=header_line or None, field=missing[0])
        keep = list(header) if usecols is None else [c for c in header if c in usecols]
        idx = [header.index(c) for c in keep]
        width = len(header)
        cols: dict[str, list] = {c: [] for c in keep}
        line_numbers: list[int] = []
        chunks: list[pd.DataFrame] = []
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip() and width > 1):
                continue  # blank line
            if len(record) != width:
                hint = _sep_hint(spec.sep.join(record), spec.sep) if len(record) == 1 else ""
                raise DataError(path, f"expected {width} {_SEP_NAMES.get(spec.sep, repr(spec.sep))}-separated fields "
                                f"{header}, found {len(record)}{hint}", line=reader.line_num)
            for c, i in zip(keep, idx):
                cols[c].append(record[i])
            line_numbers.append(reader.line_num)
            if len(line_numbers) >= _CHUNK:
                chunks.append(_to_frame(cols, line_numbers))
                cols, line_numbers = {c: [] for c in keep}, []
    except csv.Error as e:
        raise DataError(path, f"malformed record: {e}", line=reader.line_num) from None
    chunks.append(_to_frame(cols, line_numbers))
    df = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    if len(df) == 0:
        raise DataError(path, "file has no data rows" + (" below its header" if spec.header else ""))
    return df


def _read_header(reader, path: FileRef, spec: TableSpec) -> tuple[list[str], int]:
    """-> (column names, the header's line number; 0 for a file without header: ``spec.names``)."""
    if not spec.header:
        if not spec.names:
            raise ValueError("a file without header needs TableSpec.names")
        return list(spec.names), 0
    header = next(reader, None)
    while header is not None and not header:
        header = next(reader, None)
    if header is None:
        raise DataError(path, "file has no header line")
    header_line = reader.line_num
    if spec.strip_types:
        header = [h.split(":", 1)[0] for h in header]
    header = [h.strip() for h in header]
    if spec.encoding.lower().replace("-", "") in ("utf8",) and header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    return header, header_line


def _to_frame(cols: dict[str, list], lines: list[int]) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.array(v, dtype="string") for c, v in cols.items()})
    df[LINE] = np.asarray(lines, dtype=np.int64)
    return df


def read_parquet_table(path: str | Path, *, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a parquet file; ``_line`` holds the 1-based row number."""
    path = require_file(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(path, f"not a readable parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(path, f"column not found (the columns are {list(df.columns)})", field=missing[0])
    if len(df) == 0:
        raise DataError(path, "file has no rows")
    df = df.copy()
    for c in df.columns:
        if not pd.api.types.is_string_dtype(df[c]):
            df[c] = df[c].astype("string")
    df[LINE] = np.arange(1, len(df) + 1, dtype=np.int64)
    return df


def parse_int(df: pd.DataFrame, column: str, path: str | Path, *, what: str = "an integer") -> np.ndarray:
    """Column as int64; the first value that is not an integer is a DataError naming its line."""
    values = pd.to_numeric(df[column].str.strip(), errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(path, f"expected {what}, found {df[column].iloc[i]!r}", line=int(df[LINE].iloc[i]), field=column)
    return values.to_numpy().astype(np.int64)


def parse_timestamp(df: pd.DataFrame, column: str, path: str | Path, *, fmt: str | None = None) -> np.ndarray:
    """Column as int64 seconds since the epoch.

    Numbers are taken as seconds (fractions floored); with ``fmt`` (``"iso"`` or a
    ``strftime`` pattern) text dates are parsed as UTC.
    """
    text = df[column].str.strip()
    if fmt is None:
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(path, f"expected a numeric timestamp (seconds), found {df[column].iloc[i]!r}; "
                            "for dates give a time format", line=int(df[LINE].iloc[i]), field=column)
        return np.floor(values.to_numpy(dtype=float)).astype(np.int64)
    parsed = pd.to_datetime(text, format=None if fmt == "iso" else fmt, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(path, f"expected a date/time like {fmt!r}, found {df[column].iloc[i]!r}",
                        line=int(df[LINE].iloc[i]), field=column)
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.int64)
