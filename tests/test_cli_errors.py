"""Bad usage and bad inputs give one clear line naming the path and the problem, never a traceback."""

from __future__ import annotations

import errno
import io
import os
import pickle
import select
import shutil
import signal
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from bad_images import corrupt_exif_jpeg, huge_png_header, nan_float_tiff
from beholder.cli import describe_os_error, main
from beholder.models import Architecture, build_nima, save_checkpoint
from conftest import make_photo


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt", build_nima(Architecture(alpha=0.25)))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(part) for part in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def score(checkpoint: Path, *paths, capsys) -> tuple[int, str, str]:
    return run(["score", "--checkpoint", checkpoint, "--format", "jsonl", *paths], capsys)


# -- usage errors: exit 2, one line naming the path ---------------------------------------------


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_an_unwritable_out_is_one_line_naming_it(tmp_path, checkpoint, capsys, command):
    image = make_photo(tmp_path / "imgs" / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,mean\na.jpg,5.0\n")
    argv = {
        "export": ["export", "--checkpoint", checkpoint, "--out", "/proc/x/m.onnx"],
        "evaluate": [
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--images",
            image.parent,
            "--labels",
            labels,
            "--out",
            "/proc/x",
        ],
    }[command]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith(f"beholder {command}: error: ") and "/proc/x" in err
    assert len(err.strip().splitlines()) == 1


def test_os_errors_are_described_by_path_and_a_full_disk_says_so():
    assert describe_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/x")) == (
        "/proc/x: No such file or directory"
    )
    full = OSError(errno.ENOSPC, "No space left on device", "runs/a/last.pt")
    assert describe_os_error(full) == "runs/a/last.pt: no space left on device"
    assert describe_os_error(OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")).startswith(
        "a -> b"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_device_cuda_without_cuda_is_a_usage_error(tmp_path, checkpoint, capsys, command):
    image = make_photo(tmp_path / "imgs" / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,mean\na.jpg,5.0\n")
    argv = {
        "score": ["score", "--checkpoint", checkpoint, image],
        "evaluate": [
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--images",
            image.parent,
            "--labels",
            labels,
            "--out",
            tmp_path / "out",
        ],
    }[command]
    code, _, err = run([*argv, "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available" in err


def _tampered(source: Path, target: Path, change: Callable[[dict], None]) -> Path:
    payload = torch.load(source, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def _wrong_classes(payload: dict) -> None:
    payload["architecture"]["num_classes"] = 5


def _missing_key(payload: dict) -> None:
    payload["model"].pop(next(iter(payload["model"])))


def _bogus_interpolation(payload: dict) -> None:
    payload["preprocessing"]["interpolation"] = "lanczos9"


def _no_architecture(payload: dict) -> None:
    del payload["architecture"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_wrong_classes, "does not match the architecture it declares"),
        (_missing_key, "does not match the architecture it declares"),
        (_bogus_interpolation, "has a damaged model description"),
        (_no_architecture, "has a damaged model description"),
    ],
    ids=["wrong-class-count", "missing-weights", "bogus-interpolation", "no-architecture"],
)
def test_an_inconsistent_checkpoint_is_a_clear_error(tmp_path, checkpoint, capsys, change, message):
    bad = _tampered(checkpoint, tmp_path / "bad.pt", change)
    code, _, err = score(bad, make_photo(tmp_path / "a.jpg"), capsys=capsys)
    assert code == 2
    assert f"checkpoint {bad} {message}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("template", ["http://127.0.0.1:99999/{id}.jpg", "http://[::1/{id}.jpg"])
def test_an_unparseable_url_template_is_a_usage_error(tmp_path, capsys, template):
    ava = tmp_path / "AVA.txt"
    ava.write_text("1 100 0 0 1 2 3 2 1 0 0 0 0 0 1\n")
    argv = ["ava", "download", "--ava-txt", ava, "--out", tmp_path / "out", "--url-template", template]
    code, _, err = run(argv, capsys)
    assert code == 2 and f"--url-template {template!r} is not a valid URL" in err


# -- per-input problems: named, the rest still scored --------------------------------------------


def scored_paths(out: str) -> dict[str, dict]:
    import json

    return {row["path"]: row for row in map(json.loads, out.splitlines())}


def test_a_glob_that_matches_nothing_is_reported_beside_other_inputs(tmp_path, checkpoint, capsys):
    good = make_photo(tmp_path / "a.jpg")
    code, out, err = score(checkpoint, good, tmp_path / "nothing*.jpg", capsys=capsys)
    assert code == 1
    assert f"{tmp_path / 'nothing*.jpg'}: no files match this pattern" in err
    assert "mean" in scored_paths(out)[str(good)]


def test_symlink_loop_fifo_and_device_say_what_they_are(tmp_path, checkpoint, capsys):
    good = make_photo(tmp_path / "a.jpg")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop1")
    os.mkfifo(tmp_path / "pipe.jpg")
    code, out, _ = score(
        checkpoint, good, tmp_path / "loop.jpg", tmp_path / "pipe.jpg", "/dev/zero", capsys=capsys
    )
    rows = scored_paths(out)
    assert code == 1 and "mean" in rows[str(good)]
    assert rows[str(tmp_path / "loop.jpg")]["error"] == "symbolic link loop"
    assert rows[str(tmp_path / "pipe.jpg")]["error"] == "not a regular file (a FIFO)"
    assert rows["/dev/zero"]["error"] == "not a regular file (a character device)"


def test_corrupt_exif_and_nan_pixels_give_no_warnings(tmp_path, checkpoint, capsys):
    sources = [corrupt_exif_jpeg(tmp_path / "exif.jpg"), nan_float_tiff(tmp_path / "nan.tif")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would fail the run here
        code, out, err = score(checkpoint, *sources, capsys=capsys)
    assert code == 0 and err == ""
    assert all("mean" in row for row in scored_paths(out).values())


def test_a_bomb_quotes_beholders_pixel_limit_not_pillows(tmp_path, checkpoint, capsys):
    bomb = huge_png_header(tmp_path / "bomb.png", 20_000, 20_000)  # over Pillow's own 179 MP refusal
    code, out, _ = score(checkpoint, bomb, capsys=capsys)
    error = scored_paths(out)[str(bomb)]["error"]
    assert code == 1
    assert error == "too many pixels (400,000,000 pixels > limit 128,000,000)"


# -- permissions: real ones, so as an unprivileged user ------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp dirs are private to their owner)."""
    folder = Path(tempfile.mkdtemp(prefix="beholder-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):
            with_mode = path.lstat().st_mode
            if stat.S_ISDIR(with_mode):
                path.chmod(0o755)
        shutil.rmtree(folder)


def as_unprivileged(function: Callable[[], object]) -> object:
    """``function()`` where permissions apply: in a forked child as 'nobody' when running as root."""
    if os.geteuid() != 0:
        return function()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, send the result back, never return into pytest
        try:
            torch.set_num_threads(1)  # the parent's OpenMP thread pool does not survive a fork
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = ("ok", function())
        except BaseException as exc:  # sent to the parent, which raises it
            result = ("error", repr(exc))
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(result, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], 300)  # a bound on a child that hangs, not a timing
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the unprivileged child did not finish")
        kind, value = pickle.load(pipe)
    os.waitpid(pid, 0)
    if kind == "error":
        raise AssertionError(f"in the unprivileged child: {value}")
    return value


def _score_in_child(checkpoint: Path, paths: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        argv = [
            "score",
            "--checkpoint",
            str(checkpoint),
            "--runtime",
            "torch",
            "--format",
            "jsonl",
            "--workers",
            "1",
        ]
        code = main([*argv, *paths])
    return code, out.getvalue(), err.getvalue()


def test_unreadable_files_and_unsearchable_folders_are_per_file_errors(shared_dir, checkpoint):
    import torchvision.transforms.v2  # noqa: F401 - imported before the fork: the child cannot read it

    small = shared_dir / "small.pt"
    shutil.copy(checkpoint, small)
    small.chmod(0o644)
    good = make_photo(shared_dir / "a.jpg")
    unreadable = make_photo(shared_dir / "unreadable.jpg")
    unreadable.chmod(0)
    locked = shared_dir / "locked"
    make_photo(locked / "x.jpg")
    tree = shared_dir / "tree"
    make_photo(tree / "ok" / "b.jpg")
    make_photo(tree / "sub" / "c.jpg")
    locked.chmod(0)
    (tree / "sub").chmod(0)
    inputs = [str(good), str(unreadable), str(locked / "x.jpg"), str(locked / "*.jpg"), str(tree)]
    code, out, err = as_unprivileged(lambda: _score_in_child(small, inputs))
    rows = scored_paths(out)
    assert code == 1 and "Traceback" not in err, err
    assert "mean" in rows[str(good)] and "mean" in rows[str(tree / "ok" / "b.jpg")]
    assert rows[str(unreadable)]["error"] == "permission denied (cannot read the file)"
    assert rows[str(locked / "x.jpg")]["error"] == "permission denied (cannot read the file)"
    assert f"{locked / '*.jpg'}: no files match this pattern" in err
    assert f"{tree / 'sub'}: cannot list this directory: permission denied" in err


def test_file_names_with_odd_bytes_keep_every_output_format_parseable(tmp_path, checkpoint):
    """A name that is not UTF-8, or holds a newline or ESC: a strict UTF-8 stdout (most locales)
    must not raise, the CSV keeps the name's bytes, the table and stderr show one escaped line."""
    import csv
    import json
    import subprocess
    import sys

    folder = tmp_path / "odd"
    folder.mkdir()
    good = make_photo(folder / "ok.jpg").read_bytes()
    names = [b"bad\xff.jpg", b"new\nline\x1b[31m.jpg"]
    for name in names:
        Path(os.fsdecode(os.fsencode(folder) + b"/" + name)).write_bytes(good)
    Path(os.fsdecode(os.fsencode(folder) + b"/broken\xfe.jpg")).write_bytes(b"not an image")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for fmt in ("csv", "json", "table"):
        done = subprocess.run(
            [sys.executable, "-m", "beholder", "score", "--checkpoint", str(checkpoint), "--runtime", "torch",
             "--format", fmt, "--no-progress", str(folder)],
            capture_output=True, env=env, timeout=600,
        )  # fmt: skip
        assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        outputs[fmt] = done.stdout
    assert done.stderr.decode().splitlines()[0].endswith("odd/broken\\xfe.jpg: not an image, or an unsupported image format")

    rows = list(csv.reader(io.StringIO(outputs["csv"].decode(errors="surrogateescape"), newline="")))
    paths = {os.fsencode(row[0]).rsplit(b"/", 1)[1] for row in rows[1:]}
    assert paths == {*names, b"ok.jpg", b"broken\xfe.jpg"}
    assert len(json.loads(outputs["json"])) == 4
    table = outputs["table"].decode().splitlines()
    assert len(table) == 5 and "\x1b" not in outputs["table"].decode()
    assert any("bad\\xff.jpg" in line for line in table) and any("new\\nline\\x1b[31m.jpg" in line for line in table)


def test_a_tiff_over_pillows_own_pixel_limit_scores_without_a_bomb_warning(tmp_path, checkpoint, capsys, recwarn):
    """Pillow warns again while it decodes a TIFF over 89 MP; under Beholder's 128 MP limit that
    is noise on stderr (the header step's warnings are already kept off it)."""
    from PIL import Image

    path = tmp_path / "90mp.tif"
    Image.new("L", (9500, 9500), 7).save(path, compression="tiff_deflate", strip_size=2**31 - 1)
    code, out, _ = score(checkpoint, path, capsys=capsys)
    assert code == 0 and '"error"' not in out
    assert not [w for w in recwarn if "decompression bomb" in str(w.message)]
