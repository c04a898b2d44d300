"""Robust image loading: every odd or broken input becomes RGB or a clear :class:`ImageLoadError`.

Used by scoring, data preparation and the HTTP service, so that all of them agree on what an
image is. Nothing here touches PIL's semantic global flags (``LOAD_TRUNCATED_IMAGES``,
``MAX_IMAGE_PIXELS``): truncated files must fail loudly, and the pixel limit is a per-call argument.
(Pillow's block cache is raised once: it changes speed, never pixels.)

Memory is bounded three ways: a pixel limit read from the header, a per-image limit on the bytes
the decode will need (estimated from mode and size before any pixel is decoded), and a
:class:`DecodeBudget` shared by every thread that decodes, so that N workers decoding huge images
at once cannot add up past it. High-bit-depth images are scaled to 8 bits in row tiles, never as a
full-size float copy.

The module is a little over 500 lines because it is the one home of what an input image is: where
images are found, how files are opened and refused, what memory a decode may take, and how every
mode becomes RGB. Formats that need optional packages live in :mod:`beholder.formats`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import logging
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from beholder import formats
from beholder.errors import ImageLoadError

log = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image

#: Default pixel limit: 128 megapixels, far above any camera photo, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 128_000_000
#: Default limit on the memory one decode may need (decoded pixels plus conversion copies): a
#: 128 MP RGB or RGBA photo fits; one input then stays under about 1.5 GB of peak RSS.
DEFAULT_MAX_DECODE_BYTES = 1_200_000_000
#: Default total decode memory shared by all threads (see :data:`DEFAULT_DECODE_BUDGET`).
DEFAULT_DECODE_BUDGET_BYTES = 1 << 30

#: File name suffixes treated as images when scanning directories.
IMAGE_SUFFIXES = (
    frozenset(
        {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
    )
    | formats.HEIF_SUFFIXES
    | formats.RAW_SUFFIXES
)

# Alpha is composited on white: a transparent product cut-out is judged as it would look on a page.
_BACKGROUND = (255, 255, 255)
_HIGH_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Bytes per pixel of Pillow's storage (RGB is stored as 4 bytes a pixel).
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# EXIF orientation -> the transposition that displays the image upright (as ImageOps.exif_transpose).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TILE_BYTES = 4 << 20  # row tiles of high-bit-depth conversion: a few MB of float64 at a time
# Freed image blocks Pillow keeps for reuse (16 MB each): fresh large allocations are slow, and a
# decode loop allocates the same sizes again and again. Bounded, so at most 256 MB stay cached.
_PIL_BLOCKS_MAX = 16
_PIL_BOMB = re.compile(r"Image size \((\d+) pixels\)")


class DecodeBudget:
    """A semaphore counted in bytes: decodes reserve what they will need and wait while it is spent.

    A reservation larger than the whole budget is cut to the whole budget, so one oversized image
    still runs, alone. ``high_water`` records the most bytes ever reserved at once.
    """

    def __init__(self, total_bytes: int):
        if total_bytes <= 0:
            raise ValueError(f"a decode budget needs a positive size, got {total_bytes}")
        self.total_bytes = int(total_bytes)
        self.high_water = 0
        self._in_use = 0
        self._condition = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self, nbytes: int, blocking: bool = True) -> int:
        """Reserve ``nbytes`` (clamped to the budget); returns the amount reserved, 0 if not blocking
        and it is not available now."""
        amount = max(0, min(int(nbytes), self.total_bytes))
        with self._condition:
            if not blocking and self._in_use + amount > self.total_bytes:
                return 0
            self._condition.wait_for(lambda: self._in_use + amount <= self.total_bytes)
            self._in_use += amount
            self.high_water = max(self.high_water, self._in_use)
        return amount

    def release(self, amount: int) -> None:
        with self._condition:
            self._in_use -= amount
            self._condition.notify_all()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[int]:
        amount = self.acquire(nbytes)
        try:
            yield amount
        finally:
            self.release(amount)


#: The process-wide budget that every decode shares unless a caller passes its own.
DEFAULT_DECODE_BUDGET = DecodeBudget(DEFAULT_DECODE_BUDGET_BYTES)

_quiet_lock = threading.Lock()
_blocks_lock = threading.Lock()
_blocks_raised = False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep Pillow's warnings (corrupt EXIF, bomb warnings, odd MPO) off stderr; log them instead.

    ``warnings.catch_warnings`` swaps a process-global filter list, so two such blocks overlapping in
    threads can restore each other's state and leave a filter behind: ours are serialised by a lock,
    and only wrap the cheap header and metadata steps, never a full decode.
    """
    with _quiet_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.debug("suppressed %s: %s", warning.category.__name__, warning.message)


def _raise_pillow_block_cache() -> None:
    global _blocks_raised
    with _blocks_lock:
        if not _blocks_raised:
            if Image.core.get_blocks_max() < _PIL_BLOCKS_MAX:
                Image.core.set_blocks_max(_PIL_BLOCKS_MAX)
            _blocks_raised = True


def describe(source: ImageSource, name: str | None = None) -> str:
    """A human name for ``source`` to use in messages."""
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return getattr(source, "name", None) or "<bytes>"


def open_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
    budget: DecodeBudget | None = None,
    keep_grey: bool = False,
) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert ``source`` to an 8-bit RGB image.

    Args:
        source: a path, raw bytes, a binary file object or a PIL image.
        name: how to name the input in error messages (defaults to the path).
        max_pixels: refuse images with more pixels than this (decompression bombs); None disables.
        draft_size: for JPEGs, let libjpeg decode at a reduced scale no smaller than this (w, h).
            This changes pixels (a box filter): only for callers that accept that.
        max_bytes: refuse (or, for JPEG, decode at a reduced scale) images whose decode would need
            more memory than this; None disables.
        budget: the shared decode budget to reserve memory from (default: the process-wide one).
        keep_grey: greyscale images come back in mode 'L'. Resizing and normalising an 'L' image and
            then repeating it over three channels gives the same tensor as doing so on its RGB
            conversion, for a third of the memory; model input uses this.

    Raises:
        ImageLoadError: naming the input and the problem (missing, unreadable, not a regular file,
            empty, not an image, truncated, too many pixels or bytes, missing format support).
    """
    label = describe(source, name)
    if isinstance(source, Image.Image):
        with _quiet():
            orientation = _orientation(source)
        return _upright(_convert(source, label, keep_grey), orientation)
    _raise_pillow_block_cache()
    budget = budget or DEFAULT_DECODE_BUDGET
    with contextlib.ExitStack() as stack:
        fp = _as_file(source, label, stack)
        try:
            return _decode(fp, label, max_pixels, draft_size, max_bytes, budget, keep_grey)
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(label, _bomb_problem(exc, max_pixels)) from exc
        except UnidentifiedImageError as exc:
            raise ImageLoadError(label, "not an image, or an unsupported image format") from exc
        except MemoryError as exc:
            raise ImageLoadError(label, "out of memory while decoding") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageLoadError(label, _decode_problem(exc)) from exc


def _as_file(source: ImageSource, label: str, stack: contextlib.ExitStack) -> BinaryIO:
    if isinstance(source, (str, os.PathLike)):
        return stack.enter_context(_open_path(os.fspath(source), label))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(label, "empty file (0 bytes)")
        return io.BytesIO(bytes(source))
    try:
        source.seek(0, os.SEEK_CUR)
        return source
    except (AttributeError, OSError):
        return io.BytesIO(source.read())  # a pipe or socket: Pillow needs to seek


def _open_path(path: str, label: str) -> BinaryIO:
    """Open a regular file for reading, or raise saying exactly why not."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise ImageLoadError(label, "broken symbolic link (its target does not exist)") from None
        raise ImageLoadError(label, "file not found") from None
    except OSError as exc:
        raise ImageLoadError(label, _os_problem(exc)) from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(label, "is a directory, not an image")
    if not stat.S_ISREG(info.st_mode):
        # Never open these: a FIFO blocks until a writer comes, /dev/zero never ends.
        raise ImageLoadError(label, f"not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size == 0:
        raise ImageLoadError(label, "empty file (0 bytes)")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ImageLoadError(label, _os_problem(exc)) from exc


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "a socket or other special file")


def _os_problem(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (cannot read the file)"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOTDIR:
        return "a parent of the path is not a directory"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read the file ({exc.strerror or exc})"


def _decode_problem(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_problem(exc)  # a real I/O error (EIO, say), not Pillow's "broken data stream"
    text = str(exc)
    if "MAX_TEXT_CHUNK" in text:  # Pillow's guard against zTXt/iTXt/iCCP bombs: the pixels may be fine
        return (
            "a PNG metadata chunk (text or ICC profile) inflates past Pillow's safety limit; "
            "refused as a possible bomb"
        )
    return "truncated image data" if "truncated" in text.lower() else f"corrupt image data ({text})"


def _bomb_problem(exc: Exception, max_pixels: int | None) -> str:
    # Pillow refuses images beyond twice its own global limit while opening, before our check can
    # run; say what the image claims against Beholder's limit, not Pillow's.
    match = _PIL_BOMB.search(str(exc))
    size = f"{int(match.group(1)):,} pixels" if match else "more pixels than Pillow will open"
    if max_pixels is None:
        return f"too many pixels ({size}; over Pillow's decompression-bomb limit)"
    return f"too many pixels ({size} > limit {max_pixels:,})"


def _decode(
    fp: BinaryIO,
    label: str,
    max_pixels: int | None,
    draft_size: tuple[int, int] | None,
    max_bytes: int | None,
    budget: DecodeBudget,
    keep_grey: bool,
) -> Image.Image:
    raw_transpose = None
    if formats.is_raw_name(label):
        image, raw_transpose = formats.open_raw(fp, label, budget.reserve)
    else:
        head = fp.read(64)
        fp.seek(-len(head), os.SEEK_CUR)
        kind = formats.sniff_heif(head)
        if kind:
            formats.ensure_heif_support(kind, label)
        with _quiet():
            image = Image.open(fp)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            label, f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,})"
        )
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", draft_size)
    needed = _decode_bytes(image, keep_grey)
    if max_bytes is not None and needed > max_bytes:
        needed = _reduce_to_fit(image, label, needed, max_bytes, keep_grey)
    with budget.reserve(needed):
        image.load()  # decode now: truncation and corruption surface here, with the file name
        with _quiet():
            # A RAW preview's own EXIF orientation wins over LibRaw's, so it is never applied twice.
            orientation = _orientation(image) or raw_transpose
        if image.mode in _HIGH_BIT_GREY:
            # Free the 16/32-bit pixels before any RGB copy exists: the peak is then the larger of
            # (source + grey) and (grey + RGB), not all three at once.
            grey = _high_bit_to_grey(image)
            image.close()
            image = grey
        converted = _convert(image, label, keep_grey)
        del image  # let the source-mode pixels go before the transposition copy
        return _upright(converted, orientation)


def _decode_bytes(image: Image.Image, keep_grey: bool) -> int:
    """Memory the decode will hold at its peak: the decoded pixels plus the converted copy."""
    width, height = image.size
    stored = _STORAGE_BYTES.get(image.mode, 4)
    high_bit = image.mode in _HIGH_BIT_GREY  # goes through an 8-bit grey copy first
    converted = 1 if keep_grey and (high_bit or image.mode == "L") else 4
    alpha = 1 if image.mode in _ALPHA_MODES or "transparency" in image.info else 0  # the mask channel
    return width * height * (stored + high_bit + converted + alpha)


def _reduce_to_fit(image: Image.Image, label: str, needed: int, max_bytes: int, keep_grey: bool) -> int:
    """Decode a JPEG at 1/2, 1/4 or 1/8 scale when its full decode would not fit ``max_bytes``."""
    if image.format == "JPEG":
        width, height = image.size
        for scale in (2, 4, 8):
            image.draft(image.mode, (width // scale, height // scale))
            needed = _decode_bytes(image, keep_grey)
            if needed <= max_bytes:
                log.warning(
                    "%s: decoding at %dx%d instead of %dx%d to stay under %.0f MB",
                    label, *image.size, width, height, max_bytes / 1e6,
                )  # fmt: skip
                return needed
    raise ImageLoadError(
        label,
        f"too large to decode: needs about {needed / 1e6:,.0f} MB ({image.size[0]}x{image.size[1]} "
        f"{image.mode}) > limit {max_bytes / 1e6:,.0f} MB",
    )


def _orientation(image: Image.Image) -> Image.Transpose | None:
    try:
        return _ORIENTATIONS.get(image.getexif().get(0x0112))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return None  # unreadable EXIF: show the pixels as stored


def _upright(image: Image.Image, method: Image.Transpose | None) -> Image.Image:
    return image if method is None else image.transpose(method)


def _convert(image: Image.Image, label: str, keep_grey: bool = False) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (or 'L' with ``keep_grey``), alpha on white, 16-bit rescaled."""
    mode = image.mode
    if mode == "RGB" or (mode == "L" and keep_grey):
        return image
    if mode in _HIGH_BIT_GREY:
        grey = _high_bit_to_grey(image)
        return grey if keep_grey else grey.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "La":  # grey, premultiplied alpha (a TIFF's associated alpha): Pillow only converts it to LA
        image = image.convert("LA")
        mode = "LA"
    if mode in _ALPHA_MODES:
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ImageLoadError(label, f"unsupported image mode {mode!r}") from exc


def _high_bit_to_grey(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit 'L', in row tiles.

    PIL's convert() clips at 255, which turns most 16-bit photos white, so values are scaled by
    the format's peak (65535 for 16-bit, 255 or 65535 for 32-bit by content, 1.0 or 255 for float).
    Each tile goes through float64 (exact rounding), so no full-size float copy ever exists.
    """
    width, height = image.size
    rows = max(1, _TILE_BYTES // (8 * max(width, 1)))
    tiles = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def tile(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom)), dtype=np.float64)

    with np.errstate(all="ignore"):  # thread-local, unlike warnings filters
        if image.mode.startswith("I;16"):
            peak = 65535.0
        elif image.mode == "I":
            peak = 65535.0 if image.getextrema()[1] > 255 else 255.0
        else:
            top_value = max((_finite_max(tile(*t)) for t in tiles), default=0.0)
            peak = 1.0 if top_value <= 1.0 else 255.0
        grey = np.empty((height, width), np.uint8)
        for top, bottom in tiles:
            values = np.nan_to_num(tile(top, bottom), copy=False, nan=0.0, posinf=peak, neginf=0.0)
            # In place, in the order of the original clip(v / peak * 255 + 0.5): same rounding.
            values /= peak
            values *= 255.0
            values += 0.5
            grey[top:bottom] = np.clip(values, 0, 255, out=values)
    return Image.fromarray(grey)


def _finite_max(values: np.ndarray) -> float:
    return float(np.max(values, where=np.isfinite(values), initial=-np.inf))


def is_image_file(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_SUFFIXES


@dataclass
class FoundImages:
    """What :func:`find_images` found: paths to load, and inputs that gave nothing, with why."""

    paths: list[str] = field(default_factory=list)
    problems: list[ImageLoadError] = field(default_factory=list)


def find_images(patterns: Sequence[str | os.PathLike]) -> FoundImages:
    """Expand files, directories (recursively, image suffixes, no hidden files, sorted) and globs.

    Never raises for a bad input: a path that is missing or cannot be reached is kept as a path,
    so that loading reports it per file ("file not found", "permission denied"); a directory that
    cannot be listed, a subdirectory that cannot be read and a glob that matches nothing become
    ``problems``.
    """
    found = FoundImages()
    for pattern in patterns:
        text = os.fspath(pattern)
        try:
            is_dir = stat.S_ISDIR(os.stat(text).st_mode)
        except OSError:
            is_dir = False  # missing or unreachable: a literal path (or a glob), reported when loaded
        if is_dir:
            found.paths.extend(_scan_directory(text, found.problems))
        elif glob.has_magic(text) and not os.path.lexists(text):
            matches = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not matches:
                found.problems.append(ImageLoadError(text, "no files match this pattern"))
            found.paths.extend(matches)
        else:
            found.paths.append(text)
    return found


def _scan_directory(top: str, problems: list[ImageLoadError]) -> list[str]:
    def unreadable(exc: OSError) -> None:
        where = exc.filename or top
        problems.append(ImageLoadError(where, f"cannot list this directory: {_os_problem(exc)}"))

    paths = []
    for folder, _, files in os.walk(top, onerror=unreadable):
        # Entries that are not regular files (broken links, FIFOs) are kept: loading names the problem.
        paths.extend(Path(folder, name) for name in files if not name.startswith(".") and is_image_file(name))
    return [str(path) for path in sorted(paths)]


def expand_inputs(patterns: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`find_images`' paths; its problems are logged as warnings (use find_images to report them)."""
    found = find_images(patterns)
    for problem in found.problems:
        log.warning("%s", problem)
    return found.paths
