"""``beholder models``: list the registered models and backbone weights, with provenance."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list available models, their provenance and local availability"
    )
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beholder.models.registry import BACKBONE_WEIGHTS, MODELS
    from beholder.weights import find_local_weights

    rows = []
    for spec in MODELS.values():
        local = find_local_weights(spec.weights)
        packaged = spec.packaged_file
        rows.append(
            {
                "name": spec.name,
                "kind": "nima",
                "description": spec.description,
                "architecture": spec.architecture.to_dict(),
                "preprocessing": spec.preprocessing.to_dict(),
                "trained_on": spec.trained_on,
                "weights": spec.weights.to_dict(),
                "packaged": {**spec.packaged.to_dict(), "path": str(packaged) if packaged else None}
                if spec.packaged is not None
                else None,
                "local_path": str(local) if local else None,
            }
        )
    for name, weights in BACKBONE_WEIGHTS.items():
        local = find_local_weights(weights)
        rows.append(
            {
                "name": name,
                "kind": "backbone",
                "description": weights.source,
                "weights": weights.to_dict(),
                "local_path": str(local) if local else None,
            }
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2, allow_nan=False))
        return 0
    for row in rows:
        weights = row["weights"]
        status = f"present: {row['local_path']}" if row["local_path"] else "not downloaded"
        packaged = row.get("packaged")
        if packaged and packaged["path"]:
            status = f"packaged: {packaged['filename']} (ships with beholder; scores offline)"
        print(f"{row['name']}  [{row['kind']}]  {row['description']}")
        print(
            f"    weights: {weights['filename']}  sha256 {weights['sha256'] or '(not published)'}  licence {weights['license']}"
        )
        print(f"    source:  {weights['source']}")
        print(f"    url:     {weights['url'] or '(local file only)'}")
        if "preprocessing" in row:
            pre = row["preprocessing"]
            print(
                f"    preprocessing: resize {pre['resize']} {pre['interpolation']}, crop {pre['crop']}, "
                f"mean {pre['mean']}, std {pre['std']}"
            )
        print(f"    {status}")
    return 0
