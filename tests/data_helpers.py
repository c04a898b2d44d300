"""Helpers shared by the data tests: generated images, AVA.txt lines, the CLI, asset names."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

#: Offline assets used here, relative to the assets folder (read them through conftest.asset()).
REAL_LABELS_VAL = "ava_sample/labels/qiushiyang_nima/val.txt"
GENERIC_TEST = "ava_sample/official_lists/aesthetics_image_lists/generic_test.jpgl"

# Run the real CLI entry point with only the data commands (`ava`, `prepare`) registered: the other commands import
# torch when registering, which would cost seconds per subprocess and is not what these tests cover.
# SIGINT is re-armed because a child of a non-interactive shell may start with it ignored.
CLI_BOOTSTRAP = (
    "import signal, sys, beholder.cli as cli; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "cli.COMMAND_MODULES = ['beholder.cli.ava', 'beholder.cli.prepare']; sys.exit(cli.main(sys.argv[1:]))"
)


def image_bytes(
    width: int = 96, height: int = 72, *, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB"
) -> bytes:
    """A small photo-like image (smooth colour field plus texture) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_image(path: Path, width: int = 96, height: int = 72, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(width, height, **kwargs))
    return path


def ava_line(
    index: int, image_id: int, votes: Sequence[int], tags: Sequence[int] = (0, 0), challenge: int = 1
) -> str:
    """One AVA.txt row: index, id, 10 vote counts, 2 tags, challenge id."""
    assert len(votes) == 10
    return " ".join(str(v) for v in (index, image_id, *votes, *tags, challenge))


def random_votes(rng: np.random.Generator) -> list[int]:
    return [int(v) for v in rng.integers(0, 40, 10)]


def ava_main(argv: Sequence[str]) -> int:
    """``beholder`` main() in-process, with only the data commands registered."""
    import beholder.cli as cli

    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ["beholder.cli.ava", "beholder.cli.prepare"]
    try:
        return cli.main(list(argv))
    finally:
        cli.COMMAND_MODULES = saved


def ava_subprocess(argv: Sequence[str], cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    """Start ``beholder ava ...`` (see CLI_BOOTSTRAP) as a child process."""
    return subprocess.Popen(
        [sys.executable, "-c", CLI_BOOTSTRAP, *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
