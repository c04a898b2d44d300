"""docker/train-pipeline.sh end to end: download (with ids gone), prepare, train, evaluate, export.

The script runs under bash as the training container runs it, against a local HTTP server started
here that serves about 60 generated photos and answers 404 for a few ids, with a tiny training
recipe (width-0.25 MobileNet from the offline ImageNet weights).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import asset
from data_helpers import ava_line
from train_helpers import TINY, brightness_to_mean, make_image, rating_distribution

SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "train-pipeline.sh"
GONE = {1007, 1023, 1041}  # ids whose images are gone from the server (404), as on DPChallenge


class _PhotoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, photos: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _PhotoHandler)
        self.photos = photos
        self.requests: list[str] = []
        self.lock = threading.Lock()


class _PhotoHandler(BaseHTTPRequestHandler):
    server: _PhotoServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append(self.path)
        body = self.server.photos.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _write_ava(root: Path, n: int = 60) -> dict[str, bytes]:
    """AVA.txt, the official test list beside it, and the photos the server will serve."""
    import io

    rng = np.random.default_rng(7)
    lines, photos = [], {}
    for index, image_id in enumerate(range(1001, 1001 + n), 1):
        brightness = float(rng.uniform(0, 1))
        votes = np.round(rating_distribution(brightness_to_mean(brightness)) * 200).astype(int)
        votes[int(np.argmax(votes))] += 1
        lines.append(ava_line(index, image_id, votes.tolist()))
        if image_id not in GONE:
            buffer = io.BytesIO()
            make_image(brightness, rng, 72).save(buffer, "JPEG", quality=90)
            photos[f"/ava/{image_id}.jpg"] = buffer.getvalue()
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    lists = root / "aesthetics_image_lists"
    lists.mkdir()
    (lists / "generic_test.jpgl").write_text("\n".join(str(i) for i in range(1001, 1001 + n, 4)) + "\n")
    return photos


def _beholder_on_path(bin_dir: Path) -> None:
    """A `beholder` command that runs this interpreter on the code under test."""
    bin_dir.mkdir()
    command = bin_dir / "beholder"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m beholder "$@"\n')
    command.chmod(0o755)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_train_pipeline_runs_end_to_end_past_missing_images(tmp_path):
    weights_dir = asset("weights/keras_mobilenet_v1_0.25/mobilenet_2_5_224_tf_no_top.h5").parent
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    server = _PhotoServer(_write_ava(data))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _beholder_on_path(tmp_path / "bin")
    overrides = [*TINY, "phase1.epochs=1", "phase2.epochs=1", "batch_size=8", "device=cpu"]
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
        "BEHOLDER_WEIGHTS_PATH": str(weights_dir),
        "AVA_TXT": str(data / "AVA.txt"),
        "AVA_IMAGES": str(data / "images"),
        "AVA_PREPARED": str(data / "prepared"),
        "AVA_URL_TEMPLATE": f"http://127.0.0.1:{server.server_address[1]}/ava/{{id}}.jpg",
        "MAX_FAILED_FRACTION": "0.1",  # 3 of 60 are gone: 5%
        "RUNS_DIR": str(runs),
        "TRAIN_OVERRIDES": " ".join(overrides),
        "PREPARE_ARGS": "--image-size 40 --min-side 32",
        "EVALUATE_ARGS": "--batch-size 8 --no-plots",
        "EXPORT_ONNX": "0",
    }
    for name in ("RUN_NAME", "DOWNLOAD_ARGS", "SKIP_DOWNLOAD", "TRAIN_CONFIG"):
        env.pop(name, None)  # the documented example sets none of these
    try:
        first = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1800)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        # A restarted container (the same stable run name) resumes: nothing is downloaded again.
        fetched = len(server.requests)
        again = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1800)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    finally:
        server.shutdown()
        server.server_close()

    assert fetched == 60 and len(server.requests) == 60 + len(GONE)  # only the gone ids are asked again
    download = json.loads((data / "images" / "download.json").read_text())
    assert (download["failed"], download["failures_by_reason"]) == (3, {"not_found": 3})
    prepared = json.loads((data / "prepared" / "prepare.json").read_text())
    assert prepared["manifest_rows"] == 57 and prepared["rejected"]["missing_file"] == 3
    run = runs / "nima_mobilenet"  # named after the recipe, not the date
    assert (run / "checkpoints" / "best.pt").is_file()
    # The evaluation report covers every test image that could be downloaded.
    predictions = pd.read_csv(run / "evaluation" / "predictions.csv")
    test_ids = {i for i in range(1001, 1061, 4) if i not in GONE}
    assert set(predictions["image_id"].astype(int)) == test_ids
    assert json.loads((run / "evaluation" / "metrics.json").read_text())
    assert "EMD" in (run / "evaluation" / "report.md").read_text()
    # The restart resumed the finished run instead of training a new one beside it.
    assert sorted(p.name for p in runs.iterdir()) == ["nima_mobilenet"]
    assert "nothing to resume" not in again.stderr and "already holds a run" not in again.stderr


def test_the_documented_example_needs_no_download_arguments(tmp_path):
    """`docker run ... -e TRAIN_OVERRIDES=...` sets nothing else: the script must still have a source."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "beholder"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')  # records each call, succeeds
    fake.chmod(0o755)
    (tmp_path / "AVA.txt").write_text("1 1 0 0 0 0 1 0 0 0 0 0 0 0 1\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"RUN_NAME", "DOWNLOAD_ARGS", "AVA_URL_TEMPLATE", "TRAIN_CONFIG", "SKIP_DOWNLOAD"}
    }
    env.update(
        PATH=f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        AVA_TXT=str(tmp_path / "AVA.txt"),
        RUNS_DIR=str(tmp_path / "runs"),
        TRAIN_OVERRIDES="phase2.epochs=10",
    )
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert [call.split()[0] for call in calls] == ["ava", "ava", "train", "evaluate", "export"]
    assert "--page-mode" in calls[0].split() and "--max-failed-fraction 0.05" in calls[0]
    assert f"--out {tmp_path / 'runs' / 'nima_mobilenet'} " in calls[2] and "phase2.epochs=10" in calls[2]
