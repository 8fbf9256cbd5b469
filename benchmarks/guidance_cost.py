"""Forward passes and seconds per sampling step of cumulative CFG, measured on a run's held-out clips.

One-to-All's Eq. 16 needs 1, 2 or 3 backbone passes per step: all scales 1 -> one (the fully
conditioned level), equal scales -> two (unconditioned and full), different scales -> three. This
counts the backbone's forward rows per step (each CFG level is a batch row of the one batched
forward) and times ``generate`` for each ``--guidance`` setting. Quality for the same settings:
``python -m experiments.generate ckpt=CKPT sampler.guidance=[lP,lI]``.

    python -m benchmarks.guidance_cost runs/onetoall/DATE/last.ckpt --guidance 1,1 1.5,1.5 1.5,2.5
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from experiments.prediction import heldout_loader, load_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guidance_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a run's checkpoint")
    parser.add_argument("--guidance", nargs="+", default=["1,1", "1.5,1.5", "1.5,2.5"], help="comma-separated scales per setting")
    parser.add_argument("--clips", type=int, default=4, help="held-out test clips (one batch)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    return parser.parse_args(argv)


@torch.no_grad()
def measure(system, batch: dict, guidance: list[float], steps: int) -> dict:
    """Backbone rows per clip and step, and seconds per clip, of one ``generate`` call."""
    rows = []
    hook = system.backbone.register_forward_pre_hook(lambda module, args: rows.append(args[0].latents.shape[0]))
    try:
        start = time.perf_counter()
        system.generate(batch, steps=steps, guidance=guidance)
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    clips = batch["reference"].shape[0]
    return {
        "guidance": guidance,
        "forward_calls_per_step": len(rows) / steps,
        "passes_per_step": sum(rows) / (clips * steps),  # CFG levels evaluated per step
        "seconds_per_clip": round(seconds / clips, 3),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    system, run_cfg, _ = load_run(args.ckpt)
    batch = next(iter(heldout_loader(run_cfg, "test", args.clips, batch_size=args.clips)))
    steps = args.steps or system.sampler["steps"]
    results = [measure(system, batch, [float(s) for s in setting.split(",")], steps) for setting in args.guidance]
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
