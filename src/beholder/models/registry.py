"""Named models and named backbone weights, each self-describing.

A :class:`ModelSpec` says what to build (architecture), which weights to load (file name, URL,
sha256, licence, provenance) and how to preprocess images for it. ``beholder models`` prints them.
A model may also ship its weights inside the package (``packaged``): then it scores offline from
the first run, and ``weights`` stays as the provenance of the original file. It may also ship
that model's ONNX export (``packaged_onnx``): then the ONNX runtimes load it as it is, with no
export and no torch, from the very first run (see ``beholder.inference``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beholder.defaults import DEFAULT_MODEL
from beholder.errors import ConfigError
from beholder.models.architecture import KERAS_MOBILENET, Architecture
from beholder.preprocessing import Preprocessing
from beholder.weights import WeightsSpec, packaged_path, verify_packaged_file

IDEALO_COMMIT = "dceaf7c2d218bc6e80b21d6e147e3b56a21b7f31"
#: sha256 of src/beholder/resources/nima_mobilenet_idealo.safetensors, as written by
#: scripts/convert_idealo_weights.py (deterministic: rerunning it reproduces this).
PACKAGED_SHA256 = "1de4e39a8862ce3b6dbfc866f049581a45c2722bc05469ef086630868530f476"
#: sha256 of src/beholder/resources/nima_mobilenet_idealo.onnx, as written by
#: scripts/make_packaged_onnx.py from the safetensors file above.
PACKAGED_ONNX_SHA256 = "b65eac30030f630a881390cfb9199bfb4da09633862349e88f3c51e45a0c95fe"
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet"


@dataclass(frozen=True)
class ModelSpec:
    """A trained NIMA model that can be scored with by name."""

    name: str
    description: str
    architecture: Architecture
    weights: WeightsSpec
    preprocessing: Preprocessing
    trained_on: str
    #: Weights shipped inside the package (a safetensors ``state_dict`` under beholder/resources,
    #: converted from ``weights`` by a script in the repository), loaded before any download.
    packaged: WeightsSpec | None = None
    #: The model's ONNX export shipped inside the package (exported from ``packaged`` by a script
    #: in the repository, with the same metadata as any export), run as it is by the ONNX runtimes.
    packaged_onnx: WeightsSpec | None = None

    @property
    def packaged_file(self) -> Path | None:
        """The packaged weights file's path when this model has one and it is installed, else None."""
        return _installed(self.packaged)

    @property
    def packaged_onnx_file(self) -> Path | None:
        """The packaged ONNX file's path when this model has one and it is installed, else None.

        Not verified: :meth:`verified_packaged_onnx` checks it against its pinned sha256.
        """
        return _installed(self.packaged_onnx)

    def verified_packaged_onnx(self) -> Path | None:
        """The packaged ONNX file if it is installed and matches its pinned sha256 (hashed once per
        process), else None; a file that does not match is logged as a warning, never used."""
        path = self.packaged_onnx_file
        if path is None or self.packaged_onnx is None:
            return None
        return path if verify_packaged_file(self.packaged_onnx, path) else None

    def export_provenance(self) -> dict[str, Any]:
        """What an ONNX export of this model records as its weights' provenance."""
        return {"weights": self.weights.to_dict(), "trained_on": self.trained_on}


def _installed(spec: WeightsSpec | None) -> Path | None:
    if spec is None:
        return None
    path = packaged_path(spec.filename)
    return path if path.is_file() else None


MODELS: dict[str, ModelSpec] = {}
#: ImageNet starting points for training, by name (``backbone_weights=`` in training configs).
BACKBONE_WEIGHTS: dict[str, WeightsSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(MODELS)}") from None


def get_backbone_weights(name: str) -> WeightsSpec:
    try:
        return BACKBONE_WEIGHTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone weights {name!r}; available: {', '.join(BACKBONE_WEIGHTS)}"
        ) from None


def list_models() -> list[str]:
    """Names of the registered NIMA models, default first."""
    return list(MODELS)


register_model(
    ModelSpec(
        name=DEFAULT_MODEL,
        description="NIMA MobileNet v1 (width 1.0) trained on AVA by idealo",
        architecture=Architecture(backbone=KERAS_MOBILENET, alpha=1.0, dropout=0.75),
        weights=WeightsSpec(
            filename="weights_mobilenet_aesthetic_0.07.hdf5",
            url=(
                f"https://raw.githubusercontent.com/idealo/image-quality-assessment/{IDEALO_COMMIT}"
                "/models/MobileNet/weights_mobilenet_aesthetic_0.07.hdf5"
            ),
            sha256="e563ad91b3d47410e45f7238f07ab8f6abd1bd0c4b18a4b0af9c681a21a91cb2",
            format="keras_h5",
            license="Apache-2.0",
            source=f"github.com/idealo/image-quality-assessment @ {IDEALO_COMMIT}, models/MobileNet/",
        ),
        # idealo's predictor: keras load_img(target_size=(224, 224)) -> PIL nearest, then x/127.5 - 1.
        preprocessing=Preprocessing(resize=(224, 224), interpolation="nearest", crop=None),
        trained_on="AVA (idealo's random split)",
        packaged=WeightsSpec(
            filename="nima_mobilenet_idealo.safetensors",
            url=None,
            sha256=PACKAGED_SHA256,
            format="safetensors",
            license="Apache-2.0",
            source=(
                "converted from weights_mobilenet_aesthetic_0.07.hdf5 (sha256 e563ad91…a91cb2) by "
                "scripts/convert_idealo_weights.py (float32)"
            ),
        ),
        packaged_onnx=WeightsSpec(
            filename="nima_mobilenet_idealo.onnx",
            url=None,
            sha256=PACKAGED_ONNX_SHA256,
            format="onnx",
            license="Apache-2.0",
            source=(
                "exported from nima_mobilenet_idealo.safetensors (sha256 1de4e39a…30f476) by "
                "scripts/make_packaged_onnx.py (probabilities output)"
            ),
        ),
    )
)

_KERAS_LICENCE = "Apache-2.0 (Keras Applications, from TF-slim MobileNet v1 checkpoints)"

for _alpha, _tag, _sha in (
    (
        1.0,
        "1_0",
        None,
    ),  # Keras publishes no checksum for this file; it is verified by its layer shapes on load.
    (0.75, "7_5", None),
    (0.5, "5_0", None),
    (0.25, "2_5", "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"),
):
    BACKBONE_WEIGHTS[f"keras-mobilenet-v1-{_alpha}-imagenet"] = WeightsSpec(
        filename=f"mobilenet_{_tag}_224_tf_no_top.h5",
        url=f"{KERAS_APPLICATIONS_URL}/mobilenet_{_tag}_224_tf_no_top.h5",
        sha256=_sha,
        format="keras_h5",
        license=_KERAS_LICENCE,
        source="Keras Applications MobileNet v1 ImageNet weights (include_top=False)",
    )

BACKBONE_WEIGHTS["keras-mobilenet-v1-1.0-coralqat"] = WeightsSpec(
    filename="mobilenet_1_0_224_coralqat_no_top.h5",
    url=None,
    sha256="d20582434cbfa603e80deb72c0f2999986c4dc6c2cd12176ca0c0fa775cbebb6",
    format="keras_h5",
    license="Apache-2.0 (derived from google-coral/test_data)",
    source="ImageNet MobileNet v1 1.0 dequantised from Coral's QAT tflite into the Keras layout (local file)",
)
