"""Streaming, resumable output: numbered part files in a hidden folder beside OUT, merged at the end.

Rows are cut on a fixed grid of ``part_rows`` input rows; part ``k`` holds input rows
``[k * part_rows, (k + 1) * part_rows)`` with their scores, as parquet. A part is committed by
writing it atomically (temporary file, then rename), and then recording it in ``manifest.json``
(also atomic). So after ``kill -9`` every part the manifest names is complete, and a part written
but not yet recorded is simply scored again. The manifest also records the job (input file, its
size and modification time, the path column, the grid, the model), and a resumed run that does
not match it is refused rather than mixed in.

Layout (``OUT = scores.parquet``)::

    .scores.parquet.parts/manifest.json
    .scores.parquet.parts/part-000000000000.parquet   # rows 0 .. part_rows-1
    ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from beholder.errors import ConfigError
from beholder.files import atomic_write, remove_stale_temporaries, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: Job fields that must match for a run to resume another (the rest may change between runs).
RESUME_KEYS = ("input", "input_bytes", "input_mtime_ns", "rows", "column", "part_rows", "model", "fidelity")


def parts_dir(out: Path) -> Path:
    """The hidden folder of ``out``'s parts."""
    return out.parent / f".{out.name}.parts"


def part_name(index: int) -> str:
    return f"part-{index:012d}.parquet"


class PartStore:
    """The parts of one OUT (rows of ``schema``) and their manifest. One committer: the driver."""

    def __init__(self, out: Path, job: dict[str, Any], schema: pa.Schema):
        self.out = out
        self.schema = schema
        self.folder = parts_dir(out)
        self.job = job
        self.part_rows = int(job["part_rows"])
        self.done: dict[int, dict[str, int]] = {}  # part index -> {"rows", "errors"}
        self._lock: Any = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, out: Path, job: dict[str, Any], schema: pa.Schema, *, resume: bool) -> PartStore:
        """Start a new run, or (``resume``) continue the one whose parts are in the folder.

        Raises:
            ConfigError: OUT or its parts exist and ``resume`` is not set; or the parts belong to
                another job (another input, column, grid or model); or another run holds them.
        """
        folder = parts_dir(out)
        if not resume:
            existing = [str(p) for p in (out, folder) if p.exists()]
            if existing:
                raise ConfigError(
                    f"{existing[0]} already exists; pass --resume to finish an interrupted run, "
                    "or remove it to score again"
                )
        elif out.exists() and not folder.exists():
            raise ConfigError(
                f"{out} is complete already (no unfinished run to resume); remove it to score again"
            )
        store = cls(out, job, schema)
        folder.mkdir(parents=True, exist_ok=True)
        store._take_lock()
        manifest_path = folder / MANIFEST
        if manifest_path.exists():
            store._load(manifest_path)
        else:
            store._save()
        remove_stale_temporaries(folder)
        return store

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, one run at a time is on the user
            return
        self._lock = open(self.folder / ".lock", "w")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ConfigError(
                f"another run is writing {self.out} right now ({self.folder} is locked)"
            ) from None

    def _load(self, path: Path) -> None:
        import json

        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            recorded = manifest["job"]
            parts = manifest["parts"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path}: unreadable manifest ({exc}); remove {self.folder} to start over"
            ) from None
        changed = [key for key in RESUME_KEYS if recorded.get(key) != self.job.get(key)]
        if changed:
            details = "; ".join(
                f"{key}: {recorded.get(key)!r} then, {self.job.get(key)!r} now" for key in changed
            )
            raise ConfigError(
                f"cannot resume {self.out}: the interrupted run scored another job ({details}); "
                f"remove {self.folder} to start over"
            )
        for entry in parts:
            index = int(entry["index"])
            if (self.folder / part_name(index)).is_file():
                self.done[index] = {"rows": int(entry["rows"]), "errors": int(entry["errors"])}
            else:
                log.warning("part %d is in the manifest but its file is gone; scoring it again", index)
        # Parts written after the last manifest update (a kill in between) are scored again.
        for path_ in self.folder.glob("part-*.parquet"):
            if int(path_.stem.split("-")[1]) not in self.done:
                path_.unlink()

    def _save(self) -> None:
        parts = [{"index": i, **self.done[i]} for i in sorted(self.done)]
        write_json(self.folder / MANIFEST, {"format": MANIFEST_FORMAT, "job": self.job, "parts": parts})

    # -- the grid ----------------------------------------------------------------------------

    @property
    def total_parts(self) -> int:
        rows = int(self.job["rows"])
        return (rows + self.part_rows - 1) // self.part_rows

    def part_range(self, index: int) -> tuple[int, int]:
        start = index * self.part_rows
        return start, min(start + self.part_rows, int(self.job["rows"]))

    def done_rows(self) -> int:
        return sum(entry["rows"] for entry in self.done.values())

    def missing_parts(self) -> list[int]:
        return [i for i in range(self.total_parts) if i not in self.done]

    # -- committing and reading --------------------------------------------------------------

    def commit(self, index: int, table: pa.Table) -> None:
        """Write part ``index`` (its rows with their scores) atomically, then record it."""
        start, stop = self.part_range(index)
        if table.num_rows != stop - start:
            raise RuntimeError(f"part {index} should hold {stop - start} rows, got {table.num_rows}")
        # One schema for every part, whichever engine scored it (Ray may hand back large_string).
        table = table.select(self.schema.names).cast(self.schema)
        atomic_write(self.folder / part_name(index), lambda tmp: pq.write_table(table, tmp))
        errors = table.num_rows - table.column("error").null_count
        self.done[index] = {"rows": table.num_rows, "errors": errors}
        self._save()
        log.info("committed part %d: rows %d to %d, %d errors", index, start, stop - 1, errors)

    def read(self, index: int, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.folder / part_name(index), columns=columns)

    def iter_parts(self, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """``(first row index, table)`` of every part, in input order."""
        for index in range(self.total_parts):
            yield self.part_range(index)[0], self.read(index, columns)

    def errors(self) -> int:
        return sum(entry["errors"] for entry in self.done.values())

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def remove(self) -> None:
        """Delete the parts folder (after OUT is committed)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)
