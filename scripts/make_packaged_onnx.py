"""Export the default model's packaged weights into the ONNX file the package ships.

    python scripts/make_packaged_onnx.py [--out FILE]

The packaged safetensors file is checked against the sha256 pinned in the model registry, loaded
into the registered architecture, and exported by :func:`beholder.export.export_onnx` with the
same metadata as any export of that model (probabilities output, its registry name, its weights'
provenance) to ``src/beholder/resources/nima_mobilenet_idealo.onnx``. The script prints the file's
sha256 and size; pin that sha256 in the registry's ``packaged_onnx`` entry.

The exporter is not guaranteed to write the same bytes on every run or torch version, so a
rebuilt file may need a new pin; what it computes is the same (tests/test_packaged_onnx.py checks
a rebuild against the committed file within 1e-6).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from beholder.export import export_onnx  # noqa: E402
from beholder.models.nima import build_nima  # noqa: E402
from beholder.models.registry import DEFAULT_MODEL, get_model_spec  # noqa: E402
from beholder.weights import load_packaged_state_dict, packaged_path, sha256_file  # noqa: E402


def build(out: Path) -> Path:
    """Export the default model, loaded from its packaged safetensors file, to ``out``."""
    spec = get_model_spec(DEFAULT_MODEL)
    if spec.packaged is None or spec.packaged_onnx is None:
        raise SystemExit(f"{spec.name} has no packaged weights or no packaged ONNX entry in the registry")
    source = packaged_path(spec.packaged.filename)
    if not source.is_file():
        raise SystemExit(f"{source}: the packaged weights are missing (scripts/convert_idealo_weights.py)")
    actual = sha256_file(source)
    if actual != spec.packaged.sha256:
        raise SystemExit(f"{source}: sha256 {actual} is not the pinned {spec.packaged.sha256}")
    model = build_nima(spec.architecture, preprocessing=spec.preprocessing)
    model.load_state_dict(load_packaged_state_dict(spec.packaged, source))
    return export_onnx(
        model.eval(), out, name=spec.name, provenance=spec.export_provenance(), check=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: the packaged file")
    args = parser.parse_args(argv)
    spec = get_model_spec(DEFAULT_MODEL)
    out = build(args.out or packaged_path(spec.packaged_onnx.filename))
    digest = sha256_file(out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes), sha256 {digest}")
    if digest != spec.packaged_onnx.sha256:
        print("note: this differs from the sha256 pinned in beholder/models/registry.py; update the pin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
