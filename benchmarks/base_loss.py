"""The flow-matching loss of a tiny base transformer on held-out puppet clips, beside its random init.

Scores what ``conf=base`` learned without sampling: the text-to-video loss of ``conf/base.yaml``
(rectified flow, its time sampling) on the first ``--clips`` val clips (17 frames at 128 px,
straight from the generator), each at ``--draws`` fixed (time, noise) draws, for the transformer
at ``--transformer`` (default: the shipped ``asset:tiny_wan_t2v``) and the seeded random init
``conf=base`` starts from. With ``--times``, also how well the base recovers the clean latents
from a noised clip at each time t: the error of its clean-clip estimate x_t - t v, and how much of
the noise leaks into that estimate (half the spread between two noise draws; 0 for a perfect
model, whose estimate depends on the clip alone). With ``--clean-first``, whether the base copies
from a clean frame, the ability ``method.frame_noise`` trains (docs/TINY_BASE.md "Per-frame noise
levels"): the loss of latent frames 1.. at each time t with every frame at t, and with frame 0
clean at t = 0 (same noise); a base that reads the clean frame scores lower with it. Prints one
JSON object.

    python -m benchmarks.base_loss
    python -m benchmarks.base_loss --transformer runs/base/export --clips 8 --draws 4 --times 1 0.9 0.5 0.1
    python -m benchmarks.base_loss --clips 2 --draws 2 --clean-first 0.9 0.5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from hydra.utils import instantiate

from animate.flow import flow_loss, interpolate
from animate.methods.base import AnimationSystem
from common.cli import compose_config
from data.synthetic import SyntheticConfig
from data.synthetic.scene import make_clip

FRAMES = 17
BASE_ASSET = "asset:tiny_wan_t2v"


def center_square(frames: np.ndarray) -> np.ndarray:
    """The centred square crop of (T, H, W, 3) frames (the puppets come in several aspect ratios)."""
    side = min(frames.shape[1:3])
    top, left = (frames.shape[1] - side) // 2, (frames.shape[2] - side) // 2
    return np.ascontiguousarray(frames[:, top : top + side, left : left + side])


def heldout_batch(clips: int) -> dict:
    """The first ``clips`` val clips of the default puppets as a T2V training batch (video in [-1, 1])."""
    config = SyntheticConfig()
    frames = [center_square(make_clip(config, "val", index).frames[:FRAMES]) for index in range(min(clips, config.val_clips))]
    video = torch.stack([torch.from_numpy(f).float().div(127.5).sub(1).permute(3, 0, 1, 2) for f in frames])  # (B, 3, T, H, W)
    b, _, t, h, w = video.shape
    return {"video": video, "reference": video[:, :, 0], "loss_weight": torch.ones(b, 1 + (t - 1) // 4, h // 16, w // 16)}


def base_system(transformer: str | None) -> AnimationSystem:
    """conf=base's system with the transformer at ``transformer`` (None: its seeded random init), no latent cache."""
    path = f"backbone.transformer.path={transformer}" if transformer else "backbone.transformer.path=null"
    return instantiate(compose_config("base", [path, "method.latent_cache=null"]).method).eval()


@torch.no_grad()
def heldout_loss(system: AnimationSystem, batch: dict, draws: int) -> float:
    """Mean T2V loss of ``system`` on ``batch`` over ``draws`` seeded (time, noise) draws."""
    return float(sum(system.loss(batch, torch.Generator().manual_seed(draw)) for draw in range(draws)) / draws)


@torch.no_grad()
def denoising(system: AnimationSystem, batch: dict, times: list[float]) -> dict[str, float]:
    """{"x0_error@t": RMS error of the clean-latent estimate, "noise_leak@t": its dependence on the noise} per t."""
    clean = system.backbone.vae.encode(batch["video"])  # (B, C, F, h, w)
    seq = system.build_sequence(batch, {"video": clean}, {}, training=True)
    result = {}
    for t in times:
        frames_t = torch.full(seq.generate.shape, t)  # (B, F)
        estimates = []
        for draw in range(2):
            noisy = interpolate(clean, torch.randn(clean.shape, generator=torch.Generator().manual_seed(draw)), frames_t)
            estimates.append(noisy - t * system(seq, noisy, frames_t))
        result[f"x0_error@{t:g}"] = round(float((estimates[0] - clean).pow(2).mean().sqrt()), 3)
        result[f"noise_leak@{t:g}"] = round(float((estimates[0] - estimates[1]).pow(2).mean().sqrt() / 2**0.5), 3)
    result["clean_latent_rms"] = round(float(clean.pow(2).mean().sqrt()), 3)
    return result


@torch.no_grad()
def clean_first_frame(system: AnimationSystem, batch: dict, times: list[float], draws: int) -> dict[str, float]:
    """{"later_frames@t": loss of latent frames 1.. with every frame at t, "after_clean_first@t": with frame 0 clean} per t, over ``draws`` noises."""
    clean = system.backbone.vae.encode(batch["video"])  # (B, C, F, h, w)
    seq = system.build_sequence(batch, {"video": clean}, {}, training=True)
    weight = seq.loss_weight.clone()
    weight[:, :, 0] = 0  # the loss of the later frames only
    result = {}
    for t in times:
        losses = {"later_frames": 0.0, "after_clean_first": 0.0}
        for draw in range(draws):
            noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(draw))
            for name, first in (("later_frames", t), ("after_clean_first", 0.0)):
                frames_t = torch.full(seq.generate.shape, t)  # (B, F)
                frames_t[:, 0] = first
                x_t = interpolate(clean, noise, frames_t)
                losses[name] += float(flow_loss(system(seq, x_t, frames_t), noise - clean, weight)) / draws
        result |= {f"{name}@{t:g}": round(loss, 4) for name, loss in losses.items()}
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print and return {"base": loss, "random_init": loss} (and the denoising scores with ``--times``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.base_loss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transformer", default=BASE_ASSET, help="a diffusers dir, an original Wan file, or asset:NAME")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--times", type=float, nargs="*", default=[], help="flow times at which to score the base's clean-clip estimate")
    parser.add_argument("--clean-first", type=float, nargs="*", default=[], help="flow times at which to score the later frames with and without a clean frame 0")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = heldout_batch(args.clips)
    base = base_system(args.transformer)
    result = {"base": round(heldout_loss(base, batch, args.draws), 4), "random_init": round(heldout_loss(base_system(None), batch, args.draws), 4)}
    if args.times:
        result |= denoising(base, batch, args.times)
    if args.clean_first:
        result |= clean_first_frame(base, batch, args.clean_first, args.draws)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
