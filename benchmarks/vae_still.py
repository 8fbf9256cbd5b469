"""Whether a VAE encodes a still image the same way alone and inside a still clip.

A causal video VAE encodes frame 0 alone and every later group of 4 frames together. Methods that
condition on a reference image put its one-frame latent beside the target's latent frames (the
reference frame of FramePrompt's sequence, UniAnimate's ``reference_latent=repeat``), which is
only a copy away from the target where the two encodings agree. This takes ``--clips`` held-out
test clips, holds one frame still for 17 frames and prints, per VAE, for each later latent frame
k of the still clip (normalised latents, as the DiT sees them, relative to the RMS of the
one-frame latent):

- ``image_vs_still@k``: how far latent frame k is from the one-frame latent of the same image
  (0 when a still image has one encoding);
- ``still_step@k``: how far it is from latent frame k - 1 (0 once the encoding is stationary);
- ``psnr_still``: the still clip's round trip, and ``psnr_repeat``: the one-frame latent repeated
  in every latent frame and decoded, both against the still clip (dB).

    python -m benchmarks.vae_still --vaes asset:tiny_wan_vae DIR
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from animate.backbone import VideoAutoencoder, resolve_path
from animate.weights import load_vae
from benchmarks.vae_ceiling import FRAMES, REFERENCE_FRAME, unit_frames
from data.synthetic import SyntheticConfig
from data.synthetic.scene import make_clip
from metrics.pixel import frame_psnr


def relative_rms(x: torch.Tensor, scale: torch.Tensor) -> float:
    """RMS of ``x`` over the RMS of ``scale``."""
    return float(x.pow(2).mean().sqrt() / scale.pow(2).mean().sqrt())


@torch.no_grad()
def still_scores(vae: VideoAutoencoder, image: torch.Tensor) -> dict[str, float]:
    """The scores above for one image (3, H, W) in [0, 1]."""
    still = (image * 2 - 1)[None, :, None].expand(-1, -1, FRAMES, -1, -1)  # (1, 3, T, H, W)
    alone = vae.encode(still[:, :, :1])  # (1, C, 1, h, w)
    held = vae.encode(still)  # (1, C, F, h, w)
    result = {}
    for k in range(1, held.shape[2]):
        result[f"image_vs_still@{k}"] = relative_rms(held[:, :, k] - alone[:, :, 0], alone)
        result[f"still_step@{k}"] = relative_rms(held[:, :, k] - held[:, :, k - 1], alone)
    frames = image[None].expand(FRAMES, -1, -1, -1)  # (T, 3, H, W)
    for name, latents in (("psnr_still", held), ("psnr_repeat", alone.expand_as(held))):
        decoded = vae.decode(latents)[0].permute(1, 0, 2, 3).add(1).div(2)  # (T, 3, H, W)
        result[name] = float(frame_psnr(decoded, frames).mean())
    return result


def main(argv: list[str] | None = None) -> dict:
    """Print {vae: {score: mean over clips}}."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vae_still", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vaes", nargs="+", default=["asset:tiny_wan_vae"], help="VAE paths (asset:NAME, a diffusers dir or a Wan .pth)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = SyntheticConfig()
    images = [unit_frames(make_clip(config, "test", i).frames[REFERENCE_FRAME : REFERENCE_FRAME + 1])[0] for i in range(args.clips)]
    result = {}
    for path in args.vaes:
        vae = VideoAutoencoder(load_vae(resolve_path(path))).eval()
        rows = [still_scores(vae, image) for image in images]
        result[path] = {name: round(float(np.mean([row[name] for row in rows])), 3) for name in rows[0]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
