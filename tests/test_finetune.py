"""Fine-tuning a whole trained network (``model.init``) on your own rated photos.

The photos are generated, rated by mean only, listed in a CSV with paths in a subfolder and
prepared with ``beholder prepare --labels``; the network to start from is the packaged
``nima-mobilenet-idealo``, so no download and no other asset is needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from beholder import cli, metrics
from beholder.config import load_config
from beholder.data.manifest import load_manifest
from beholder.errors import ConfigError
from beholder.models import create_model, create_training_model, load_checkpoint, save_checkpoint
from beholder.models.registry import DEFAULT_MODEL
from beholder.preprocessing import load_input
from beholder.training import fit, predict
from beholder.training.distributed import DistInfo
from beholder.training.setup import RunData
from train_helpers import make_image

# idealo's own preprocessing (224x224 nearest, no crop), read from the originals, so that the
# training path sees exactly what scoring sees; the head alone trains, on cached features.
FINETUNE = [
    f"model.init={DEFAULT_MODEL}",
    "data.image_size=224",
    "data.crop=null",
    "data.interpolation=nearest",
    "data.use_cache=false",
    "data.undersample_per_bin=null",
    "data.num_workers=0",
    "feature_cache=true",
    "phase1.epochs=3",
    "phase1.lr=0.02",
    "phase2.epochs=0",
    "batch_size=16",
    "device=cpu",
    "progress=false",
]


@pytest.fixture(scope="module")
def rated_photos(tmp_path_factory):
    """A prepared directory of 60 generated photos whose CSV gives only high mean ratings (7-9)."""
    root = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(3)
    (root / "csv" / "photos").mkdir(parents=True)
    rows = []
    for i in range(60):
        brightness = float(rng.uniform(0, 1))
        make_image(brightness, rng, 64).save(root / "csv" / "photos" / f"p{i:02d}.jpg", quality=92)
        rows.append({"path": f"photos/p{i:02d}.jpg", "mean": 7.0 + 2.0 * brightness})
    pd.DataFrame(rows).to_csv(root / "csv" / "ratings.csv", index=False)
    prepared = root / "prepared"
    argv = ["prepare", "--labels", str(root / "csv" / "ratings.csv"), "--out", str(prepared)]
    code = cli.main(
        [*argv, "--image-size", "64", "--min-side", "32", "--val-fraction", "0.2", "--no-progress"]
    )
    assert code == 0
    return prepared


@pytest.mark.slow
def test_epoch_0_validation_equals_scoring_with_the_idealo_model(rated_photos):
    config = load_config(None, FINETUNE)
    model, provenance = create_training_model(config, prepared_dir=rated_photos)
    assert provenance["init"]["model"] == DEFAULT_MODEL and provenance["init"]["sha256"]
    data = RunData(config, rated_photos, model.preprocessing, DistInfo(), pin=False)
    validated, _ = predict(model, data.val_loader, torch.device("cpu"))  # (N, 10)

    idealo = create_model(DEFAULT_MODEL)
    val = load_manifest(rated_photos, splits="val")
    inputs = np.stack([load_input(path, idealo.preprocessing) for path in val["source_path"]])
    with torch.inference_mode():
        scored = torch.softmax(idealo(torch.from_numpy(inputs)), dim=-1).numpy()
    assert len(scored) == len(validated) > 0
    np.testing.assert_allclose(validated, scored, atol=1e-5)


@pytest.mark.slow
def test_fine_tuning_moves_toward_the_new_labels_and_records_its_start(rated_photos, tmp_path):
    config = load_config(None, FINETUNE)
    model, _ = create_training_model(config, prepared_dir=rated_photos)
    data = RunData(config, rated_photos, model.preprocessing, DistInfo(), pin=False)
    before, truth = predict(model, data.val_loader, torch.device("cpu"))
    emd_before = metrics.emd(truth, before)

    summary = fit(config, rated_photos, tmp_path / "run")
    tuned, payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    after, _ = predict(tuned, data.val_loader, torch.device("cpu"))
    emd_after = metrics.emd(truth, after)
    print(f"val EMD {emd_before:.4f} -> {emd_after:.4f}")
    assert emd_after < 0.8 * emd_before
    mean_error = np.abs(metrics.distribution_mean(after) - metrics.distribution_mean(truth)).mean()
    assert mean_error < np.abs(metrics.distribution_mean(before) - metrics.distribution_mean(truth)).mean()
    # Provenance: the checkpoint, summary.json and the summary name the network it started from.
    assert payload["provenance"]["init"]["model"] == DEFAULT_MODEL
    assert summary["init"]["model"] == DEFAULT_MODEL
    assert tuned.preprocessing == model.preprocessing  # idealo's, as configured
    # The head-only phase left idealo's backbone as it was.
    idealo = create_model(DEFAULT_MODEL)
    for key, value in idealo.backbone.state_dict().items():
        assert torch.equal(value, tuned.backbone.state_dict()[key]), key


def test_init_from_a_checkpoint_takes_its_whole_network_and_names_it(tmp_path):
    idealo = create_model(DEFAULT_MODEL)
    with torch.no_grad():
        idealo.head[1].bias.add_(0.5)  # a "trained" head that differs from idealo's
    start = save_checkpoint(tmp_path / "start.pt", idealo, provenance={"trained_with": "test"}, epoch=3)
    config = load_config(None, [f"model.init={start}", "data.crop=null"])
    model, provenance = create_training_model(config)
    for key, value in idealo.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    init = provenance["init"]
    assert (
        init["model"] == str(start) and init["epoch"] == 3 and init["provenance"] == {"trained_with": "test"}
    )
    assert len(init["sha256"]) == 64
    # data.* applies on top of the starting network's preprocessing; null keeps the network's.
    assert model.preprocessing.resize == (256, 256) and model.preprocessing.crop is None
    assert model.preprocessing.interpolation == "bilinear"


def test_init_must_match_the_configured_architecture(tmp_path):
    with pytest.raises(
        ConfigError, match=r"model.init nima-mobilenet-idealo is a keras_mobilenet_v1 .*alpha 1.0.*0.25"
    ):
        create_training_model(load_config(None, [f"model.init={DEFAULT_MODEL}", "model.alpha=0.25"]))
    with pytest.raises(ConfigError, match=r"neither a registered model .* nor an existing checkpoint"):
        create_training_model(load_config(None, [f"model.init={tmp_path / 'absent.pt'}"]))
