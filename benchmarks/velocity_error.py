"""Where a method's flow-matching error sits: on the person or the background, at each noise level.

For a checkpoint and the same system untrained (for a method whose additions start at zero, the
pretrained base), the mean squared error of the velocity against the method's own flow target
(``eps - x0`` for rectified flow) on held-out clips at fixed flow times, split by the exact person mask (a latent cell is "person" when the person
touches any pixel of the frames it encodes) and, with ``--margin``, leaving out background cells
within that many cells of the person. The training loss averages all of these; this splits it,
so a fine-tune that learns to copy the background but loses the base's low-noise denoising shows
as what it is. Prints one JSON object.

    python -m benchmarks.velocity_error runs/unianimate/DATE/last.ckpt --clips 8 --times 0.05 0.2 0.5 0.8 0.95
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import Tensor

from animate.methods.base import AnimationSystem, LatentSequence
from experiments.prediction import build_system, heldout_loader, load_run


def latent_person_mask(person_mask: Tensor, latent_shape: tuple[int, int, int], vae_time: int) -> Tensor:
    """(B, T, H, W) bool pixel mask -> (B, F, h, w) float: 1 where the person touches a latent cell's pixels in its frames."""
    frames, h, w = latent_shape
    mask = person_mask.float()
    groups = [mask[:, :1]] + [mask[:, 1 + vae_time * i : 1 + vae_time * (i + 1)] for i in range(frames - 1)]  # Wan: frame 0, then groups
    per_frame = torch.stack([g.amax(dim=1) for g in groups], dim=1)  # (B, F, H, W)
    return F.adaptive_max_pool2d(per_frame, (h, w))


def training_sequence(system: AnimationSystem, batch: dict) -> tuple[dict, LatentSequence]:
    """The batch as the system prepares it and its training sequence with every condition kept (ground-truth target latents in ``clean``)."""
    batch = system.prepare_batch(batch, augment=False)
    latents = system.encode(batch, system.latent_inputs(training=True))
    b = batch["video"].shape[0]
    return batch, system.sequence(batch, latents, system.level_drops(len(system.guidance_levels) - 1, b), training=True)


@torch.no_grad()
def velocity_errors(system: AnimationSystem, batches: list[dict], times: list[float], margin: int) -> dict[str, float]:
    """{"person@t", "background@t": mean squared velocity error per latent value} over ``batches``."""
    sums = {f"{region}@{t:g}": [0.0, 0.0] for t in times for region in ("person", "background")}
    for index, batch in enumerate(batches):
        batch, seq = training_sequence(system, batch)
        b = batch["video"].shape[0]
        target = seq.clean[:, :, seq.target]  # (B, C, F, h, w)
        person = latent_person_mask(batch["person_mask"], tuple(target.shape[2:]), system.backbone.compression.vae_time)
        near = F.max_pool2d(person, 2 * margin + 1, stride=1, padding=margin) if margin else person
        for t in times:
            noise = torch.randn(seq.clean.shape, generator=torch.Generator().manual_seed(index))
            pair = system.flow_pair(seq, noise, torch.full((b,), t))  # the method's own input and target at t
            error = (system(seq, pair.model_input, pair.t) - pair.target)[:, :, seq.target].pow(2).mean(dim=1)  # (B, F, h, w)
            for region, weight in (("person", person), ("background", 1 - near)):
                sums[f"{region}@{t:g}"][0] += float((error * weight).sum())
                sums[f"{region}@{t:g}"][1] += float(weight.sum())
    return {key: round(total / max(count, 1e-8), 4) for key, (total, count) in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.velocity_error", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a checkpoint written by experiments.fit")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--times", type=float, nargs="+", default=[0.05, 0.2, 0.5, 0.8, 0.95])
    parser.add_argument("--margin", type=int, default=0, help="background cells within this many cells of the person are left out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    trained, run_cfg, checkpoint = load_run(args.ckpt)
    batches = list(heldout_loader(run_cfg, args.split, args.clips))
    result = {
        "global_step": checkpoint.get("global_step"),
        "clips": sum(batch["video"].shape[0] for batch in batches),
        "untrained": velocity_errors(build_system(run_cfg), batches, args.times, args.margin),
        "trained": velocity_errors(trained, batches, args.times, args.margin),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
