"""Int8 post-training quantization of an exported NIMA ONNX file (OpenVINO NNCF).

MobileNet v1 quantizes badly: naive post-training quantization moves mean scores by 0.25–0.34 on
average and by up to 1.0. Two things bring it back (``benchmarks/int8.py`` measures every variant;
``docs/int8.md`` has the table):

* the depthwise convolutions stay in float32. Their per-channel weight ranges are very uneven
  and, quantized, they alone move means by 0.22 on average. They hold about 3 % of the FLOPs.
* full bias correction (NNCF's ``BiasCorrection``, not the fast variant): each quantized layer's
  bias absorbs the mean output shift that rounding its weights causes, measured on the
  calibration images.

The pointwise convolutions, the first convolution and the head are int8 with per-channel
weights. The result runs on OpenVINO, which executes the int8 convolutions natively (about 3× fp32
ONNX Runtime at batch 8–32 on an AVX2 CPU). ONNX Runtime reads the same file but only simulates
the quantization (a float convolution between Q/DQ pairs), so there it is slower than fp32.

Calibration needs only unlabelled images that look like the photos to be scored. Generated
photo-like images work as well as real photos here, so :func:`int8_variant` calibrates on 64 of
them (:mod:`beholder.synthetic`) and caches the result: the ``openvino-int8`` runtime needs no
data from the user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from beholder.errors import ConfigError
from beholder.imageio import ImageSource

log = logging.getLogger(__name__)

#: ``beholder.precision`` in a quantized file's metadata; fp32 exports have no such key.
PRECISION_KEY = "beholder.precision"
CALIBRATION_BATCH = 8
#: The calibration set of :func:`int8_variant`: generated photo-like images, seeds apart from the
#: evaluation images of ``benchmarks/int8.py``. Part of the cache key, so a new recipe re-quantizes.
CALIBRATION_RECIPE = {"images": 64, "size": [800, 600], "first_seed": 50_000, "recipe": 1}
#: x86 CPU flags for int8 dot products into int32. Without one of them (plain AVX2) OpenVINO's int8
#: kernels add u8 x s8 products in saturating int16, and means move by up to 0.9 (docs/int8.md).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _calibration_batches(onnx_path: Path, images: Iterable[ImageSource]) -> list:
    """Preprocess ``images`` exactly as the file's metadata declares, in batches of 8."""
    import numpy as np

    from beholder.export import load_onnx_metadata
    from beholder.preprocessing import Preprocessing, load_input

    pre = Preprocessing.from_dict(load_onnx_metadata(onnx_path)["preprocessing"])
    arrays = [load_input(image, pre) for image in images]  # the model input, as scoring makes it
    if not arrays:
        raise ConfigError(f"{onnx_path}: int8 quantization needs at least one calibration image")
    stacked = np.stack(arrays).astype(np.float32)
    return [stacked[i : i + CALIBRATION_BATCH] for i in range(0, len(stacked), CALIBRATION_BATCH)]


def depthwise_convolutions(model) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes of an ONNX model."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]


def quantize_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images: Iterable[ImageSource],
) -> Path:
    """Write an int8 copy of a Beholder fp32 ONNX export, calibrated on ``calibration_images``.

    Args:
        onnx_path: a file written by :func:`beholder.export.export_onnx`.
        out_path: where to write the int8 model (atomically); its metadata is the source's plus
            ``beholder.precision = int8``.
        calibration_images: paths, bytes or PIL images (64 or more photo-like images are plenty).

    Raises:
        ConfigError: NNCF is not installed, the source is not a Beholder export, or there are no
            calibration images.
    """
    try:
        import nncf
        import onnx
    except ImportError as exc:
        raise ConfigError("int8 quantization needs the 'int8' extra: pip install 'beholder[int8]'") from exc
    from beholder.files import atomic_write_bytes

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    batches = _calibration_batches(onnx_path, calibration_images)
    model = onnx.load_model(os.fspath(onnx_path))
    input_name = model.graph.input[0].name
    # NNCF logs INFO lines and draws progress bars on stdout, which carries `beholder score`'s
    # results: keep its warnings only, and send anything it prints to stderr.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                model,
                nncf.Dataset(batches, lambda batch: {input_name: batch}),
                subset_size=len(batches),  # NNCF counts dataset items, here batches of 8
                fast_bias_correction=False,
                ignored_scope=nncf.IgnoredScope(names=depthwise_convolutions(model)),
            )
    finally:
        nncf_log.setLevel(level)
    entry = next((p for p in quantized.metadata_props if p.key == PRECISION_KEY), None)
    entry = entry or quantized.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, "int8"
    atomic_write_bytes(out_path, quantized.SerializeToString())
    log.info("wrote int8 model %s (%d calibration images)", out_path, sum(len(b) for b in batches))
    return out_path


def cpu_runs_int8_exactly() -> bool:
    """Whether OpenVINO's int8 kernels compute exact int32 sums on this CPU.

    True on x86 CPUs with VNNI or AMX, and on other architectures (their int8 kernels do not take
    the saturating AVX2 path); False on x86 with AVX2 only, or when /proc/cpuinfo is unreadable.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in VNNI_FLAGS)


def int8_variant(fp32_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The int8 copy of the fp32 ONNX file ``fp32_path``, quantized once and kept in the verified
    ONNX cache (keyed by the source file's sha256 and :data:`CALIBRATION_RECIPE`).

    The first call calibrates on generated photo-like images (about half a minute on 2 cores).
    """
    from beholder.onnx_cache import OnnxCache, sha256_of, source_key
    from beholder.synthetic import photo_like

    fp32_path = Path(fp32_path)
    cache = OnnxCache(cache_dir)
    key = source_key(int8_of=sha256_of(fp32_path), calibration=CALIBRATION_RECIPE)
    cached = cache.lookup(key)
    if cached is not None:
        return cached
    width, height = CALIBRATION_RECIPE["size"]
    first = CALIBRATION_RECIPE["first_seed"]
    # A warning so that the CLI shows it: the first run pauses for the calibration, once.
    log.warning(
        "first use of int8 for %s: quantizing it once (later runs load it from %s)", fp32_path.name, cache.folder
    )
    images = (photo_like(width, height, first + i) for i in range(CALIBRATION_RECIPE["images"]))
    return cache.store(key, lambda target: quantize_int8(fp32_path, target, images))
