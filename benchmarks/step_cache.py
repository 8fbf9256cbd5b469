"""Speed and quality cost of step caching (First-Block Cache, ``sampler.cache_threshold``) on a run's held-out clips.

For each threshold it generates the same clips from the same noise and reports the share of
forwards that skipped the blocks after block 0, seconds per clip (sampling and decoding), the
PSNR of the video against the uncached generation (the cost of caching alone) and against the
ground truth, over the whole frame and on the person (the synthetic data's masks). Threshold 0 is
the uncached sampler. The same setting in a full held-out evaluation:
``python -m experiments.generate ckpt=CKPT sampler.cache_threshold=0.1``.

    python -m benchmarks.step_cache runs/frameprompt/DATE/last.ckpt --thresholds 0 0.05 0.1 0.2 --clips 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from animate.methods.base import to_unit
from experiments.prediction import heldout_loader, load_run
from metrics.pixel import frame_psnr, masked_frame_psnr
from metrics.video import flatten_frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a run's checkpoint")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2], help="cache thresholds; 0 = uncached (always run first)")
    parser.add_argument("--clips", type=int, default=4, help="held-out test clips (one batch)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--split", default="test")
    return parser.parse_args(argv)


def frames01(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B * T, 3, H, W) in [0, 1]."""
    return flatten_frames(to_unit(video))


@torch.no_grad()
def measure(system, batch: dict, threshold: float, steps: int, uncached: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """One generation of ``batch`` at ``threshold``: its statistics and the video (B, 3, T, H, W)."""
    start = time.perf_counter()
    video = system.generate(batch, steps=steps, cache_threshold=threshold)
    seconds = time.perf_counter() - start
    cache = system.step_cache
    generated, truth = frames01(video), frames01(batch["video"])
    result = {
        "threshold": threshold,
        "reused_fraction": round(cache.reuse_fraction if cache is not None else 0.0, 3),
        "seconds_per_clip": round(seconds / video.shape[0], 3),
        "psnr_vs_uncached": None if uncached is None else round(frame_psnr(generated, frames01(uncached)).mean().item(), 2),
        "psnr": round(frame_psnr(generated, truth).mean().item(), 2),
    }
    if "person_mask" in batch:
        result["psnr_mask"] = round(masked_frame_psnr(generated, truth, batch["person_mask"].flatten(0, 1)).nanmean().item(), 2)
    return result, video


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    system, run_cfg, _ = load_run(args.ckpt)
    batch = next(iter(heldout_loader(run_cfg, args.split, args.clips, batch_size=args.clips)))
    steps = args.steps or system.sampler["steps"]
    reference, uncached = measure(system, batch, 0.0, steps)
    results = [reference] + [measure(system, batch, threshold, steps, uncached)[0] for threshold in args.thresholds if threshold > 0]
    print(json.dumps({"ckpt": args.ckpt, "clips": args.clips, "steps": steps, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
