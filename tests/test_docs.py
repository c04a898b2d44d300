"""The Python code blocks of the README and docs/deploy.md run verbatim, and say what they claim."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_photo

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(relative: str) -> list[str]:
    blocks = _BLOCK.findall((REPO / relative).read_text(encoding="utf-8"))
    assert blocks, f"{relative} has no Python blocks"
    return blocks


def run_block(code: str, where: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, where, "exec"), namespace)  # the documentation's own code, verbatim
    return namespace


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A small model with a shorter-side resize and a centre crop, exported as nima.onnx."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from beholder.export import export_onnx
    from beholder.models import Architecture, build_nima
    from beholder.preprocessing import Preprocessing

    torch.manual_seed(0)
    pre = Preprocessing(resize=256, interpolation="bilinear", crop=224)
    model = build_nima(Architecture(alpha=0.25), preprocessing=pre).eval()
    with torch.no_grad():  # He initialisation keeps images apart through the 27 layers (no tied scores)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        torch.nn.init.normal_(model.head[1].weight, std=0.5)
    folder = tmp_path_factory.mktemp("docs")
    return export_onnx(model, folder / "nima.onnx", name="docs-test")


@pytest.fixture
def workdir(tmp_path, monkeypatch, exported) -> Path:
    (tmp_path / "nima.onnx").write_bytes(exported.read_bytes())
    make_photo(tmp_path / "photo.jpg", size=(360, 240), seed=1)  # not square: the crop matters
    for seed, name in enumerate(("room_a.jpg", "room_b.jpg")):
        make_photo(tmp_path / name, seed=seed)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def beholder_mean(onnx_file: Path, image: Path) -> float:
    from beholder.export import load_onnx_metadata
    from beholder.preprocessing import Preprocessing, load_input
    from beholder.runtimes import OnnxRuntime

    pre = Preprocessing.from_dict(load_onnx_metadata(onnx_file)["preprocessing"])
    batch = torch.from_numpy(load_input(image, pre)[None])
    probabilities = OnnxRuntime.from_file(onnx_file)(batch)[0]
    return float((probabilities * np.arange(1, 11)).sum())


def test_deploy_stand_alone_onnx_snippet_gives_beholders_score(workdir, capsys):
    (snippet,) = [code for code in python_blocks("docs/deploy.md") if "InferenceSession" in code]
    run_block(snippet, "docs/deploy.md (stand-alone ONNX)")
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == pytest.approx(beholder_mean(workdir / "nima.onnx", workdir / "photo.jpg"), abs=1e-3)


def test_every_deploy_block_runs(workdir, capsys):
    for number, code in enumerate(python_blocks("docs/deploy.md")):
        run_block(code, f"docs/deploy.md, Python block {number + 1}")


def test_readme_python_blocks_run(workdir, capsys):
    for number, code in enumerate(python_blocks("README.md")):
        run_block(code, f"README.md, Python block {number + 1}")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("room_")]
    assert [line.split()[0] for line in lines] == ["room_a.jpg", "room_b.jpg"]
    assert all(1 <= float(line.split()[1]) <= 10 for line in lines)
