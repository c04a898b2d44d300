"""find_images: files, directories and globs, where unreadable places and empty globs are reported."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from beholder.imageio import expand_inputs, find_images
from conftest import make_photo


def _deny(monkeypatch: pytest.MonkeyPatch, function: str, denied: Path) -> None:
    """Make ``os.<function>`` fail with EACCES on ``denied``, as for a user without the permission
    (the tests may run as root, whom chmod does not stop)."""
    real = getattr(os, function)

    def guarded(path, *args, **kwargs):
        if os.fspath(path).startswith(str(denied)):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, function, guarded)


def test_files_directories_and_globs(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "sub/c.JPEG", "sub/.hidden.jpg", "notes.txt", "d.avif", "e.HEIC", "f.dng"):
        make_photo(tmp_path / name, fmt="PNG" if name.endswith(("png", "txt")) else "JPEG")
    found = find_images([tmp_path])
    names = [Path(p).relative_to(tmp_path).as_posix() for p in found.paths]
    assert names == ["a.png", "b.jpg", "d.avif", "e.HEIC", "f.dng", "sub/c.JPEG"] and not found.problems
    assert find_images([str(tmp_path / "*.jpg")]).paths == [str(tmp_path / "b.jpg")]
    # Missing literal paths stay, to be reported per file when loaded.
    assert find_images([str(tmp_path / "notes.txt"), "nope.jpg"]).paths == [
        str(tmp_path / "notes.txt"),
        "nope.jpg",
    ]


def test_a_glob_that_matches_nothing_is_reported(tmp_path: Path) -> None:
    make_photo(tmp_path / "a.jpg")
    found = find_images([tmp_path / "a.jpg", str(tmp_path / "*.png")])
    assert found.paths == [str(tmp_path / "a.jpg")]
    assert [str(p) for p in found.problems] == [f"{tmp_path / '*.png'}: no files match this pattern"]


def test_an_unsearchable_parent_is_a_per_file_error_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    make_photo(locked / "x.jpg")
    _deny(monkeypatch, "stat", locked)
    assert expand_inputs([str(locked / "x.jpg")]) == [str(locked / "x.jpg")]


def test_unreadable_subdirectories_are_reported(tmp_path: Path, monkeypatch) -> None:
    make_photo(tmp_path / "a.jpg")
    make_photo(tmp_path / "private" / "b.jpg")
    _deny(monkeypatch, "scandir", tmp_path / "private")
    found = find_images([tmp_path])
    assert found.paths == [str(tmp_path / "a.jpg")]
    assert [p.path for p in found.problems] == [str(tmp_path / "private")]
    assert "cannot list this directory: permission denied" in found.problems[0].problem
