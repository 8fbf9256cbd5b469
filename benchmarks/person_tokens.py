"""How big the person is for the tiny DiT in a dataset: mean token coverage and token height per split and subset.

A token covers 16 x 16 pixels (the tiny VAE's 4x times the DiT's 4 x 4 patches, ``--token``) and
counts as the person's when at least ``--min-share`` of its pixels are person-mask pixels. Prints
one JSON object {split: {subset: {token_coverage, token_height, frames}}} over every frame of the
samples in ``DIR`` (any dataset with person masks: the puppets, prepared data with masks).

    python -m benchmarks.person_tokens .cache/data/synthetic
    python -m benchmarks.person_tokens DIR --splits train --subsets video images
"""

from __future__ import annotations

import argparse
import json

from data.shards import read_manifest
from data.synthetic.measure import MIN_SHARE, TOKEN, split_token_stats


def main(argv: list[str] | None = None) -> dict:
    """Print and return the stats of each split and subset present in the dataset."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.person_tokens", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="dataset directory with manifest.json")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--subsets", nargs="+", default=["video", "images"])
    parser.add_argument("--token", type=int, default=TOKEN)
    parser.add_argument("--min-share", type=float, default=MIN_SHARE)
    args = parser.parse_args(argv)
    splits = read_manifest(args.root)["splits"]
    result = {
        split: {subset: split_token_stats(args.root, split, subset, args.token, args.min_share) for subset in args.subsets if splits[split][subset]["samples"]}
        for split in args.splits if split in splits
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
