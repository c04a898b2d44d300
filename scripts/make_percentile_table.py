"""Build the packaged AVA percentile table from real AVA label rows.

    python scripts/make_percentile_table.py ../shared/assets/ava_sample/labels/ava_labels_merged.csv

The source is checked against its sha256 before use. The output,
``src/beholder/resources/ava_mean_percentiles.json``, holds the AVA mean score at every 0.1 % of
the distribution of AVA means (1,001 quantiles), from which :mod:`beholder.percentiles` answers
"what share of AVA photos has a lower mean". Provenance goes into the file and into NOTICE.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from beholder.files import write_json
from beholder.ratings import distribution_mean, votes_to_distribution

SOURCE_SHA256 = "d9ed521d0ff0836c5401a257d6f4141c83bd4774c09927d1fc2cb163d658b245"
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "beholder" / "resources" / "ava_mean_percentiles.json"
LEVELS = np.round(np.arange(0, 1001) / 10, 1)  # 0.0, 0.1, ..., 100.0 percent


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path, help="ava_labels_merged.csv (c1..c10 per AVA id)")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    actual = sha256(args.labels)
    if actual != SOURCE_SHA256:
        print(f"{args.labels}: sha256 {actual} is not the expected {SOURCE_SHA256}", file=sys.stderr)
        return 2
    frame = pd.read_csv(args.labels)
    votes = frame[[f"c{i}" for i in range(1, 11)]].to_numpy(np.float64)
    means = distribution_mean(votes_to_distribution(votes))
    quantiles = np.percentile(means, LEVELS)
    write_json(
        args.out,
        {
            "description": "AVA mean score at each percentile level of the distribution of AVA means",
            "source": "ava_labels_merged.csv: AVA vote counts for 68,311 AVA ids (see NOTICE)",
            "source_sha256": SOURCE_SHA256,
            "images": len(means),
            "quartiles": [round(float(q), 4) for q in np.percentile(means, [25, 50, 75])],
            "levels": LEVELS.tolist(),
            "means": [round(float(q), 5) for q in quantiles],
        },
    )
    print(f"wrote {args.out}: {len(means)} AVA means, quartiles {np.percentile(means, [25, 50, 75]).round(3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
