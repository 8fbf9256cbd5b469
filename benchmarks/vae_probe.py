"""Short single-frame training probes of the tiny Wan VAE: how fast does a setting learn?

Trains ``experiments.train_vae``'s VAE (same architecture settings, same initialisation) on 64 x 64
single-frame crops of the synthetic puppets with a plain MSE on the posterior mean, once per
learning rate, and prints the mean training PSNR of every 50 steps. A probe of a few hundred steps
ranks settings in about a minute each on one core; the numbers quoted in docs/TINY_VAE.md and
in conf/train_vae.yaml come from it. After ``--``: train_vae settings as ``key=value``.

    python -m benchmarks.vae_probe --lrs 1e-3 3e-3 6e-3 -- base_dim=32
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from experiments import train_vae


def probe(vae_args: train_vae.TrainVAEConfig, samples: list, lr: float, steps: int, batch: int, side: int) -> list[float]:
    """Mean training PSNR (dB) over each 50-step window of one run."""
    rng = np.random.default_rng(vae_args.seed)
    vae = train_vae.build_vae(vae_args)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    psnrs = []
    for _ in range(steps):
        video, _ = train_vae.random_batch(samples, rng, 1, side, batch)  # (B, 3, 1, side, side)
        mse = (train_vae.decode_unclamped(vae, vae.encode(video).latent_dist.mean) - video).square().mean()
        optimizer.zero_grad(set_to_none=True)
        mse.backward()
        optimizer.step()
        psnrs.append(-10 * math.log10(mse.item() / 4))  # range 2 -> peak^2 = 4
    return [round(float(np.mean(psnrs[i : i + 50])), 2) for i in range(0, steps, 50)]


def main(argv: list[str] | None = None) -> dict:
    """Run the probes and print {lr: [PSNR per 50 steps]}."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vae_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("vae_settings", nargs=argparse.REMAINDER, help="after --: train_vae settings, key=value (conf/train_vae.yaml)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [item for item in args.vae_settings if item != "--"]
    vae_args = train_vae.settings(["out=unused", *overrides])
    samples = train_vae.load_split(train_vae.dataset_dir(vae_args), "train")
    results = {str(lr): probe(vae_args, samples, lr, args.steps, args.batch, args.side) for lr in args.lrs}
    print(json.dumps({"settings": overrides, "psnr_per_50_steps": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
