"""What the sampler makes of a checkpoint, step by step: its clean-clip estimate against the truth.

At every Euler step the guided velocity implies a clean clip, ``x0 = x_t - t v``. This samples
``--clips`` clips of a split with the checkpoint's own sampler (or ``--untrained``: the system at
its initial weights, for UniAnimate-DiT the pretrained base) and prints, per step, the mean
squared error of that estimate against the clip's true latents, on the person and on the
background (the exact person mask, as in :mod:`benchmarks.velocity_error`). A model that has
learned the clip starts near its answer at t = 1 and sharpens it; a model that has not carries
the starting noise into its estimate, which the decoded strip (``--figure``: the middle frame of
the first clip's estimate at five steps, the sample, and the truth's VAE round trip) shows as
speckle. Run it on ``--split train`` to tell a model that has not learned from one that has not
generalised.

    python -m benchmarks.sampling_trace runs/unianimate/DATE/last.ckpt --split train --figure trace.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from animate.flow import sample_estimate
from animate.methods.base import AnimationSystem, to_unit
from benchmarks.velocity_error import latent_person_mask, training_sequence
from experiments.prediction import build_system, heldout_loader, load_run

SPLITS = ("train", "val", "test")


def true_latents(system: AnimationSystem, batch: dict) -> tuple[Tensor, slice]:
    """The clip's clean target latents (B, C, F, h, w) as training builds them, and the target frames' slice of the sequence."""
    _, seq = training_sequence(system, batch)
    return seq.clean[:, :, seq.target], seq.target


def region_errors(estimate: Tensor, truth: Tensor, person: Tensor) -> dict[str, float]:
    """Mean squared error per latent value of (B, C, F, h, w) latents: all, on the person (B, F, h, w) cells, off them."""
    error = (estimate - truth).pow(2).mean(dim=1)  # (B, F, h, w)
    off = 1 - person
    return {
        "all": round(float(error.mean()), 4),
        "person": round(float((error * person).sum() / person.sum().clamp_min(1e-8)), 4),
        "background": round(float((error * off).sum() / off.sum().clamp_min(1e-8)), 4),
    }


@torch.no_grad()
def trace(system: AnimationSystem, batch: dict, strip_steps: list[int]) -> tuple[list[dict], dict, list[Tensor]]:
    """Per-step errors of the clean-clip estimate, the sample's errors, and the strip's latents (estimates at ``strip_steps``, sample, truth)."""
    truth, target = true_latents(system, batch)
    person = latent_person_mask(batch["person_mask"], tuple(truth.shape[2:]), system.backbone.compression.vae_time)
    rows: list[dict] = []
    strip: list[Tensor] = []

    def record(step: int, x: Tensor, t: Tensor, velocity: Tensor) -> None:
        estimate = sample_estimate(x, t, velocity)[:, :, target]
        rows.append({"step": step, "t": round(float(t[:, target].max()), 4), **region_errors(estimate, truth, person)})
        if step in strip_steps:
            strip.append(estimate[:1])

    sample = system.sample_latents(batch, on_step=record)
    strip += [sample[:1], truth[:1]]
    return rows, region_errors(sample, truth, person), strip


def middle_frames(system: AnimationSystem, latents: list[Tensor]) -> np.ndarray:
    """Decode each (1, C, F, h, w) latent clip and lay their middle frames side by side: uint8 (H, W * n, 3)."""
    frames = []
    for latent in latents:
        video = to_unit(system.backbone.vae.decode(latent))[0]  # (3, T, H, W) in [0, 1]
        frames.append(video[:, video.shape[1] // 2])
    return torch.cat(frames, dim=2).permute(1, 2, 0).mul(255).round().byte().numpy()


def main(argv: list[str] | None = None) -> dict:
    """Print {"steps": [per-step errors averaged over clips], "sample": errors of the final sample}."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampling_trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a checkpoint written by experiments.fit")
    parser.add_argument("--split", default="val", choices=SPLITS)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--untrained", action="store_true", help="trace the system at its initial weights instead")
    parser.add_argument("--figure", type=Path, default=None, help="write the decoded strip of the first clip here (PNG)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    trained, run_cfg, checkpoint = load_run(args.ckpt)
    system = build_system(run_cfg) if args.untrained else trained
    steps = int(system.sampler["steps"])
    strip_steps = sorted({round(f * (steps - 1)) for f in (0, 0.25, 0.5, 0.75, 1)})
    per_batch, samples, strip = [], [], None
    for batch in heldout_loader(run_cfg, args.split, args.clips):
        rows, sample, latents = trace(system, batch, strip_steps)
        per_batch.append((batch["video"].shape[0], rows))
        samples.append((batch["video"].shape[0], sample))
        if strip is None:
            strip = latents
    weights = np.array([n for n, _ in per_batch], dtype=float)

    def mean(values: list[float]) -> float:
        return round(float(np.average(values, weights=weights)), 4)

    keys = ("all", "person", "background")
    result = {
        "global_step": None if args.untrained else checkpoint.get("global_step"),
        "split": args.split,
        "clips": int(weights.sum()),
        "steps": [
            {"step": row["step"], "t": row["t"], **{k: mean([rows[i][k] for _, rows in per_batch]) for k in keys}}
            for i, row in enumerate(per_batch[0][1])
        ],
        "sample": {k: mean([s[k] for _, s in samples]) for k in keys},
        "strip_steps": strip_steps,
    }
    if args.figure is not None and strip is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(middle_frames(system, strip)).save(args.figure)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
