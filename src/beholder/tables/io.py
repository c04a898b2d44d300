"""Tables in and out: CSV, parquet and JSON lines, read in row chunks and written in a stream.

Reading goes through :mod:`pyarrow.dataset`, which streams every format in batches, so memory does
not grow with the table. CSV has no types: every CSV column is read as text, so that a value in
row 9,000,000 cannot contradict the type guessed from the first rows, and a CSV comes back out
exactly as it went in. Parquet and JSON lines keep their types.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds
import pyarrow.parquet as pq

from beholder.errors import ConfigError
from beholder.files import PathLike, atomic_write, strict_json_value

log = logging.getLogger(__name__)

#: File suffix -> table format.
FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
#: Rows pyarrow decodes at a time while reading (the chunks handed on are cut from these).
_READ_BATCH_ROWS = 8192


def table_format(path: PathLike) -> str:
    """'csv', 'parquet' or 'jsonl', from the file name; ConfigError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"{path}: unknown table format {suffix or '(no suffix)'!r}; use {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]


def csv_text_options(path: PathLike) -> pa_csv.ConvertOptions:
    """Conversion options that read every column of the CSV file ``path`` as text."""
    try:
        with pa_csv.open_csv(path) as reader:
            names = reader.schema.names
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the CSV header: {exc}") from None
    return pa_csv.ConvertOptions(column_types={name: pa.string() for name in names})


def open_table(path: PathLike) -> pa_ds.Dataset:
    """A lazily read dataset over the table file ``path``.

    Raises:
        ConfigError: the file is missing, empty of columns, or not readable as its suffix says.
    """
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise ConfigError(f"{path}: table not found")
    try:
        if fmt == "csv":
            file_format = pa_ds.CsvFileFormat(convert_options=csv_text_options(path))
            return pa_ds.dataset(path, format=file_format)
        return pa_ds.dataset(path, format="json" if fmt == "jsonl" else "parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: cannot read as {fmt}: {exc}") from None


def count_rows(dataset: pa_ds.Dataset, path: PathLike) -> int:
    """Rows in the table (parquet: from its footer; CSV and JSON lines: one streaming pass)."""
    try:
        return dataset.count_rows()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def iter_chunks(dataset: pa_ds.Dataset, path: PathLike, chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """``(first row index, table)`` for consecutive chunks of exactly ``chunk_rows`` rows (the last may
    be shorter), in file order. At most one chunk and one read batch are held at a time."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    start = 0
    batches = dataset.to_batches(batch_size=min(chunk_rows, _READ_BATCH_ROWS))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{path}: cannot read past row {start + pending_rows}: {exc}") from None
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= chunk_rows:
            table = pa.Table.from_batches(pending, schema=dataset.schema)
            yield start, table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, pending_rows = rest.to_batches(), rest.num_rows
            start += chunk_rows
    if pending_rows:
        yield start, pa.Table.from_batches(pending, schema=dataset.schema)


class _JsonLinesWriter:
    """pyarrow writes no JSON: one strict JSON object per row (NaN -> null), chunk by chunk."""

    def __init__(self, path: Path):
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close(), as pyarrow writers

    def write_table(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            self._file.write(json.dumps(strict_json_value(row), default=str, allow_nan=False) + "\n")

    def close(self) -> None:
        self._file.close()


def write_table_file(path: PathLike, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Write ``tables`` (each cast to ``schema``), one after another, to ``path`` in the format its
    suffix names, atomically: ``path`` appears complete or keeps its old content. Returns the rows."""
    fmt = table_format(path)
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        if fmt == "parquet":
            writer = pq.ParquetWriter(tmp, schema)
        elif fmt == "csv":
            writer = pa_csv.CSVWriter(tmp, schema)
        else:
            writer = _JsonLinesWriter(tmp)
        try:
            for table in tables:
                writer.write_table(table.select(schema.names).cast(schema))
                rows += table.num_rows
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"{path}: cannot write these columns as {fmt}: {exc}") from None
        finally:
            writer.close()

    atomic_write(path, write)
    return rows
