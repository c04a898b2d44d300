"""Labels to evaluate against: from a prepared manifest, or from a user's CSV of rated photos.

Both sources give one normalised *labels frame*, sorted by image id: ``image_id`` (text),
``path``, then either the true distribution ``true_p1..true_p10`` (from vote counts or given
probabilities) or only ``true_mean`` (and maybe ``true_std``), and always ``true_mean`` and
``true_std``. Rows whose ratings are unusable (non-finite, negative, all zero, a mean outside
1..10) are rejected together in one error that lists each row and why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beholder.errors import ConfigError
from beholder.files import PathLike
from beholder.ratings import PROBABILITY_COLUMNS, VOTE_COLUMNS, mean_std, votes_to_distribution

if TYPE_CHECKING:  # pandas is an optional dependency ("data" extra); imported where used
    import pandas as pd

log = logging.getLogger(__name__)

#: The manifest splits evaluation can select, and ``all``.
EVALUATION_SPLITS = ("train", "val", "test", "all")
#: Columns of the true distribution in the labels frame and in predictions.csv.
TRUE_PROBABILITY_COLUMNS = [f"true_{column}" for column in PROBABILITY_COLUMNS]
#: How many rejected rows an error message lists before "and N more".
SHOWN_REJECTIONS = 10


def id_text(value: Any) -> str:
    """An image id as text (a user's ids can be file names); integral floats from CSVs lose ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def id_key(text: str) -> tuple[int, int, str]:
    """Sort key: numeric ids (AVA's) as numbers, the others after them as text.

    isdecimal, not isdigit: int() rejects digits such as "²". The text breaks ties ("7" and "07")
    so that the order is total.
    """
    return (0, int(text), text) if text.isdecimal() else (1, 0, text)


def has_distributions(labels: pd.DataFrame) -> bool:
    """Whether the labels carry true distributions (so EMD and std correlations can be computed)."""
    return TRUE_PROBABILITY_COLUMNS[0] in labels.columns


def labels_from_manifest(manifest: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Select ``split`` (or ``all``) of a manifest (:func:`beholder.data.manifest.load_manifest`)."""
    import pandas as pd

    if split not in EVALUATION_SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(EVALUATION_SPLITS)}")
    missing = [c for c in ["image_id", "split", "source_path", *VOTE_COLUMNS] if c not in manifest.columns]
    if missing:
        raise ConfigError(f"manifest lacks columns {missing}; was it written by `beholder ava prepare`?")
    rows = manifest if split == "all" else manifest[manifest["split"] == split]
    if rows.empty:
        available = sorted(str(s) for s in manifest["split"].dropna().unique())
        raise ConfigError(f"split {split!r} has no images in the manifest (splits present: {available})")
    frame = pd.DataFrame(
        {"image_id": [id_text(v) for v in rows["image_id"]], "path": [str(p) for p in rows["source_path"]]}
    )
    votes = rows[VOTE_COLUMNS].to_numpy(dtype=np.float64)  # (N, 10)
    return _finish_labels(frame, "manifest", votes=votes)


def _first_present(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def load_user_labels(images_dir: PathLike, labels_csv: PathLike) -> pd.DataFrame:
    """Read a user's ratings of their own photos into the normalised labels frame.

    The CSV names each photo by ``path``/``file``/``filename`` (relative to ``images_dir`` or,
    failing that, to the CSV's folder; or absolute) or by ``id``/``image_id`` (a file name, relative
    path or stem under ``images_dir``, searched recursively), and rates it by vote counts
    ``votes_1..votes_10`` or ``c1..c10`` (AVA's form), by a distribution ``p1..p10``, or by a
    ``mean`` (or ``mean_score``) on 1..10, optionally with a ``std``. Rows without any rating are
    skipped with a warning; a photo named but not found is an error.
    """
    import pandas as pd

    from beholder.data.labels import parse_numbers, rating_columns

    images_dir, labels_csv = Path(images_dir), Path(labels_csv)
    if not images_dir.is_dir():
        raise ConfigError(f"--images: not a directory: {images_dir}")
    if not labels_csv.is_file():
        raise ConfigError(f"--labels: file not found: {labels_csv}")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=True)
    except Exception as exc:  # pandas raises several parser error types
        raise ConfigError(f"{labels_csv}: not a readable CSV ({exc})") from exc
    columns = list(table.columns)
    path_column = _first_present(columns, ["path", "file", "filename"])
    id_column = _first_present(columns, ["image_id", "id"])
    if path_column is None and id_column is None:
        raise ConfigError(f"{labels_csv}: needs an 'id', 'image_id' or 'path' column; found {columns}")
    rating = rating_columns(columns, labels_csv)
    given = rating.columns + ([rating.std] if rating.std else [])
    cells = table[given].fillna("").astype(str).apply(lambda column: column.str.strip())
    rated = (cells[rating.columns] != "").any(axis=1).to_numpy()  # a row with no rating is skipped
    partial = rated & (cells[rating.columns] == "").any(axis=1).to_numpy()
    if partial.any():
        raise ConfigError(
            f"{labels_csv}: row {int(np.argmax(partial)) + 2} has only some of {rating.columns}"
        )
    values, bad = parse_numbers(cells, given)
    if rating.std:  # an empty std cell means "not given"
        bad = np.where((bad == len(given) - 1) & (cells[rating.std] == "").to_numpy(), -1, bad)
    bad_rows = np.flatnonzero(rated & (bad >= 0))
    if bad_rows.size:
        row, column = int(bad_rows[0]), given[bad[bad_rows[0]]]
        raise ConfigError(f"{labels_csv}: column {column!r} has non-numbers, e.g. {table[column].iloc[row]!r}")
    if not rated.all():
        log.warning(
            "%s: %d of %d rows have no rating; skipped", labels_csv, int((~rated).sum()), len(table)
        )
    if not rated.any():
        raise ConfigError(f"{labels_csv}: no row has a rating")

    rows = np.flatnonzero(rated)
    ids, paths = _locate_photos(table, rows, path_column, id_column, images_dir, labels_csv)
    frame = pd.DataFrame({"image_id": ids, "path": paths})
    csv_rows = [int(row) + 2 for row in rows]  # the header is line 1
    if rating.kind == "mean":
        std = values[rated, 1] if rating.std else None
        return _finish_labels(frame, str(labels_csv), means=values[rated, 0], stds=std, csv_rows=csv_rows)
    if rating.kind == "probabilities":
        return _finish_labels(frame, str(labels_csv), probabilities=values[rated], csv_rows=csv_rows)
    return _finish_labels(frame, str(labels_csv), votes=values[rated], csv_rows=csv_rows)


def _locate_photos(
    table: pd.DataFrame,
    rows: np.ndarray,
    path_column: str | None,
    id_column: str | None,
    images_dir: Path,
    labels_csv: Path,
) -> tuple[list[str], list[str]]:
    """(image ids, file paths) of the rated ``rows``; every named photo must exist."""
    index: dict[str, str] | None = None  # built on the first id lookup: it lists images_dir
    ids, paths, missing = [], [], []
    for row in rows:
        given_path = table[path_column].iloc[row] if path_column is not None else None
        given_id = table[id_column].iloc[row] if id_column is not None else None
        if isinstance(given_path, str) and given_path.strip():
            name = given_path.strip()
            # relative to --images, else to the CSV's own folder (a CSV kept beside an images/ dir)
            candidates = (
                [Path(name)] if Path(name).is_absolute() else [images_dir / name, labels_csv.parent / name]
            )
            found = next((str(c) for c in candidates if c.is_file()), None)
        elif isinstance(given_id, str) and given_id.strip():
            name = id_text(given_id)
            index = _image_index(images_dir) if index is None else index
            found = index.get(name)
            if found == "":
                raise ConfigError(f"{labels_csv}: id {name!r} matches several files in {images_dir}")
        else:
            raise ConfigError(f"{labels_csv}: row {row + 2} names no image")
        if found is None:
            missing.append(name)
        paths.append(found)
        ids.append(id_text(given_id) if isinstance(given_id, str) and given_id.strip() else name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{len(missing)} rated image(s) not found in {images_dir}: {shown}")
    return ids, paths


def _image_index(images_dir: Path) -> dict[str, str]:
    """Relative path, file name and stem -> path, for every image under ``images_dir``.

    An ambiguous key (two files with one stem) maps to "" so that using it is an error.
    """
    from beholder.imageio import expand_inputs

    index: dict[str, str] = {}
    for text in expand_inputs([images_dir]):
        path = Path(text)
        keys = {path.relative_to(images_dir).as_posix(), path.name, path.stem}
        for key in keys:
            index[key] = "" if key in index and index[key] != text else text
    return index


def _problems(values: np.ndarray, kind: str) -> list[str | None]:
    """Per row: why it is no rating (the one rule of :func:`beholder.data.labels.rating_problem`)."""
    from beholder.data.labels import rating_problem  # with pandas: imported where used

    found = (rating_problem(row, kind) for row in values)
    return [None if problem is None else problem[1] for problem in found]


def _reject(
    source: str, frame: pd.DataFrame, problems: list[str | None], csv_rows: list[int] | None
) -> None:
    """Raise one ConfigError listing every row with a problem (the first few, then a count)."""
    bad = [i for i, problem in enumerate(problems) if problem is not None]
    if not bad:
        return
    where = [
        (
            f"row {csv_rows[i]} (image {frame['image_id'].iloc[i]!r})"
            if csv_rows
            else f"image {frame['image_id'].iloc[i]!r}"
        )
        + f": {problems[i]}"
        for i in bad[:SHOWN_REJECTIONS]
    ]
    more = f"; and {len(bad) - SHOWN_REJECTIONS} more" if len(bad) > SHOWN_REJECTIONS else ""
    raise ConfigError(f"{source}: {len(bad)} row(s) rejected: " + "; ".join(where) + more)


def _finish_labels(
    frame: pd.DataFrame,
    source: str,
    *,
    votes: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    means: np.ndarray | None = None,
    stds: np.ndarray | None = None,
    csv_rows: list[int] | None = None,
) -> pd.DataFrame:
    """Validate every row, derive the true distribution, mean and std, and sort by image id."""
    duplicated = frame["image_id"][frame["image_id"].duplicated()]
    if not duplicated.empty:
        raise ConfigError(f"{source}: image id {duplicated.iloc[0]!r} appears more than once")
    given = votes if votes is not None else probabilities
    if given is not None:
        _reject(source, frame, _problems(given, "votes" if votes is not None else "probabilities"), csv_rows)
        # Given probabilities are normalised too: rounded ones may sum to 0.999.
        true_p = votes_to_distribution(given)  # (N, 10)
        for column, values in zip(TRUE_PROBABILITY_COLUMNS, true_p.T):
            frame[column] = values
        frame["true_mean"], frame["true_std"] = mean_std(true_p)
    else:
        spread = stds if stds is not None else np.full(len(means), np.nan)
        _reject(source, frame, _problems(np.column_stack([means, spread]), "mean"), csv_rows)
        frame["true_mean"] = means
        frame["true_std"] = stds if stds is not None else np.nan
    ids = frame["image_id"].tolist()
    order = sorted(range(len(ids)), key=lambda i: id_key(ids[i]))
    return frame.iloc[order].reset_index(drop=True)
