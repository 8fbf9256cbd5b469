"""What a VAE lets any method reach on the synthetic test clips: its round trip scored like a generation.

A generated video is decoded by the VAE, so the VAE's reconstruction of the ground truth bounds
every metric a method can reach; repeating the reference frame is the baseline a method must beat.
This renders ``--clips`` held-out test clips (17 frames, the generator's defaults), and prints
whole-frame and in-mask PSNR and silhouette IoU at each ``--thresholds`` for the truth, the
repeated reference (frame 20, outside the window) and each VAE's round trip. With ``--stills``
each VAE also encodes every frame alone as an image (``VAE@stills``): the gap between the two is
what the 4x temporal compression of moving people costs.

    python -m benchmarks.vae_ceiling --vaes asset:tiny_wan_vae DIR --thresholds 0.1 0.15 0.2
    python -m benchmarks.vae_ceiling --stills
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from animate.backbone import VideoAutoencoder, resolve_path
from animate.weights import load_vae
from data.synthetic import SyntheticConfig
from data.synthetic.scene import make_clip
from metrics.pixel import frame_psnr, masked_frame_psnr
from metrics.silhouette import silhouette_iou

FRAMES = 17
REFERENCE_FRAME = 20


def unit_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float().div(255).permute(0, 3, 1, 2)


@torch.no_grad()
def round_trip(vae: VideoAutoencoder, frames: torch.Tensor) -> torch.Tensor:
    """Encode and decode (T, 3, H, W) frames in [0, 1]."""
    video = frames.permute(1, 0, 2, 3)[None] * 2 - 1  # (1, 3, T, H, W)
    return vae.decode(vae.encode(video))[0].permute(1, 0, 2, 3).add(1).div(2)


def round_trip_stills(vae: VideoAutoencoder, frames: torch.Tensor) -> torch.Tensor:
    """Encode and decode each of (T, 3, H, W) frames alone, as a one-frame clip."""
    return torch.cat([round_trip(vae, frame[None]) for frame in frames])


def scores(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, plate: torch.Tensor, thresholds: list[float]) -> list[float]:
    """[psnr, psnr_mask, iou@threshold...] of one clip (means over frames)."""
    values = [frame_psnr(generated, target).mean(), masked_frame_psnr(generated, target, mask).nanmean()]
    values += [silhouette_iou(generated, target, mask, plate, t).nanmean() for t in thresholds]
    return [float(v) for v in values]


def main(argv: list[str] | None = None) -> dict:
    """Print {model: {psnr, psnr_mask, silhouette_iou@t...}} averaged over the clips."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vae_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vaes", nargs="+", default=["asset:tiny_wan_vae"], help="VAE paths (asset:NAME, a diffusers dir or a Wan .pth)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1])
    parser.add_argument("--stills", action="store_true", help="also score each VAE on every frame encoded alone (VAE@stills)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = SyntheticConfig()
    vaes = {path: VideoAutoencoder(load_vae(resolve_path(path))).eval() for path in args.vaes}
    rows: dict[str, list[list[float]]] = {name: [] for name in ["truth", "repeat_reference", *vaes, *(f"{v}@stills" for v in vaes if args.stills)]}
    for index in range(args.clips):
        sample = make_clip(config, "test", index)
        target = unit_frames(sample.frames[:FRAMES])
        mask = torch.from_numpy(sample.person_mask[:FRAMES])
        plate = unit_frames(sample.plate[None]).expand(FRAMES, -1, -1, -1)
        reference = unit_frames(sample.frames[REFERENCE_FRAME : REFERENCE_FRAME + 1]).expand(FRAMES, -1, -1, -1)
        rows["truth"].append(scores(target, target, mask, plate, args.thresholds))
        rows["repeat_reference"].append(scores(reference, target, mask, plate, args.thresholds))
        for path, vae in vaes.items():
            rows[path].append(scores(round_trip(vae, target), target, mask, plate, args.thresholds))
            if args.stills:
                rows[f"{path}@stills"].append(scores(round_trip_stills(vae, target), target, mask, plate, args.thresholds))
    names = ["psnr", "psnr_mask", *(f"silhouette_iou@{t:g}" for t in args.thresholds)]
    result = {model: dict(zip(names, np.round(np.mean(values, axis=0), 3).tolist())) for model, values in rows.items()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
