"""One-to-All's long-video claims on the synthetic benchmark's minute-long clips.

``--mode seams``: a whole long clip generated segment by segment, with token replace (each
segment starts from the previous one's last 5 frames, encoded and held clean) and as
independent segments (sharing only the reference). Per variant: PSNR over the clip and inside
the person mask, PSNR of the frames next to a seam (2 on each side) against the rest, and the
seam jump: the mean absolute change between the two frames that meet at a seam minus the ground
truth's change there (0 = as smooth as the real motion), and PSNR per quarter of the clip (drift).

``--mode lengths``: the first 17, 33 and 65 frames generated as ONE segment (no token replace),
per-frame PSNR in bins of frames 1-17, 18-33, 34-65: whether the model holds up past the
training length (HRFA's f = 0 query RoPE against ``method.query_rope=full``, the paper's Fig. 13).
Give several checkpoints to compare them on the same clips and noise.

The long clips are made once with the run's synthetic settings plus ``long_clips`` and
``long_seconds`` in ``--root`` (the test split's identities, unseen in training).

    python -m benchmarks.long_video runs/onetoall/DATE/last.ckpt --mode seams --seconds 30
    python -m benchmarks.long_video RUN_F0/last.ckpt RUN_FULL/last.ckpt --mode lengths --lengths 17 33 65
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from animate.rollout import roll_out, rollout_config
from common.files import atomic_write_json
from data.synthetic.config import SyntheticConfig
from data.synthetic.writer import ensure_dataset
from experiments.prediction import load_run

SEAM_RADIUS = 2  # frames on each side of a seam counted as "at the seam"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_video", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpts", nargs="+", help="checkpoints of One-to-All runs")
    parser.add_argument("--mode", choices=("seams", "lengths"), default="seams")
    parser.add_argument("--seconds", type=float, default=60.0, help="long clip length (seams)")
    parser.add_argument("--clips", type=int, default=1, help="long test clips")
    parser.add_argument("--segment", type=int, default=None, help="frames per segment (seams; default: the run's)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[17, 33, 65], help="one-segment lengths (lengths)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--root", default=None, help="where the long clips live (default: next to the run's dataset)")
    parser.add_argument("--out", default=None, help="JSON report (default: beside the first checkpoint)")
    return parser.parse_args(argv)


def long_clips(run_cfg, seconds: float, clips: int, frames: int, root: str | None) -> list[dict]:
    """The first ``frames`` frames of ``clips`` long test clips as evaluation batches of one clip."""
    synthetic = dict(OmegaConf.to_container(run_cfg.data.synthetic, resolve=True)) | {"long_clips": clips, "long_seconds": seconds}
    root = Path(root or f"{run_cfg.data.root}_long{int(seconds)}s")
    manifest = ensure_dataset(root, SyntheticConfig(**synthetic), progress=False)
    shards = [str(root / path) for path in manifest["splits"]["test"]["long"]["shards"]]
    data = instantiate(run_cfg.data, root=None, synthetic=None, test_urls=shards, frame_buckets=[frames], batch_size=1, random_window=False)
    return data.heldout_samples("test", clips)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame PSNR (T,) of videos (3, T, H, W) in [-1, 1] (peak 1 on [0, 1]), optionally inside a mask (T, H, W)."""
    error = ((a - b) / 2).square().mean(0)  # (T, H, W)
    if mask is None:
        mse = error.flatten(1).mean(1)
    else:
        mask = mask.float()
        mse = (error * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def seam_frames(total: int, segment: int, overlap: int) -> list[int]:
    """First frame index of each segment after the first (where new frames meet the previous segment's)."""
    seams, generated = [], segment
    while generated < total:
        seams.append(generated)
        generated = generated - overlap + segment
    return seams


def seam_report(video: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, seams: list[int]) -> dict:
    """Whole-clip and at-seam PSNR, and the seam jump, of one clip (3, T, H, W)."""
    frames = psnr(video, target)
    near = torch.zeros(video.shape[1], dtype=torch.bool)
    for seam in seams:
        near[max(0, seam - SEAM_RADIUS) : seam + SEAM_RADIUS] = True
    change = lambda v: (v[:, 1:] - v[:, :-1]).abs().mean(dim=(0, 2, 3)) / 2  # (T - 1,) on [0, 1]
    jumps = (change(video) - change(target))[[s - 1 for s in seams]]
    return {
        "psnr": frames.mean().item(),
        "psnr_mask": psnr(video, target, mask).mean().item(),
        "psnr_at_seams": frames[near].mean().item() if near.any() else None,
        "psnr_elsewhere": frames[~near].mean().item(),
        "seam_jump": jumps.mean().item() if len(seams) else None,
        "seams": len(seams),
        "psnr_by_quarter": [chunk.mean().item() for chunk in frames.chunk(4)],  # drift over the clip
    }


def mean_of(values: list):
    """The mean of numbers, element-wise for lists; None when the values are None."""
    if values[0] is None:
        return None
    if isinstance(values[0], list):
        return [sum(column) / len(column) for column in zip(*values)]
    return sum(values) / len(values)


@torch.no_grad()
def seams(args: argparse.Namespace) -> dict:
    """Token replace against independent segments on whole long clips."""
    system, run_cfg, _ = load_run(args.ckpts[0])
    compression = system.backbone.compression
    frames = 1 + (int(args.seconds * run_cfg.data.synthetic.fps) - 1) // compression.vae_time * compression.vae_time  # the longest 1 + 4k window
    token_replace = rollout_config(system, {"chunk_frames": args.segment})
    segment = token_replace.chunk_frames
    batches = long_clips(run_cfg, args.seconds, args.clips, frames, args.root)
    report = {"ckpt": args.ckpts[0], "frames": frames, "segment_frames": segment, "clips": len(batches)}
    for name, cfg in (("token_replace", token_replace), ("independent", replace(token_replace, strategy="independent"))):
        rows = []
        for batch in batches:
            video = roll_out(system, batch, cfg, {"steps": args.steps}, progress=False)[0]
            cut = seam_frames(frames, segment, cfg.carried_frames)
            rows.append(seam_report(video, batch["video"][0].float(), batch["person_mask"][0], cut))
        report[name] = {key: mean_of([r[key] for r in rows]) for key in rows[0]}
    return report


@torch.no_grad()
def lengths(args: argparse.Namespace) -> dict:
    """Per-frame quality of one-segment generations longer than the training clips, per checkpoint."""
    longest = max(args.lengths)
    report = {"lengths": args.lengths, "runs": {}}
    batches = None
    for ckpt in args.ckpts:
        system, run_cfg, _ = load_run(ckpt)
        if batches is None:
            batches = long_clips(run_cfg, max(args.seconds, longest / run_cfg.data.synthetic.fps + 1), args.clips, longest, args.root)
        rows = {}
        for length in args.lengths:
            bins = [(0, min(length, 17))] + [(start, min(length, end)) for start, end in ((17, 33), (33, 65), (65, 129)) if start < length]
            scores = {f"{a + 1}-{b}": [] for a, b in bins}
            for batch in batches:
                clip = {k: (v[:, :, :length] if k in ("pose", "video") else v) for k, v in batch.items()}
                video = system.generate(clip, steps=args.steps)[0]  # one segment of ``length`` frames
                frames = psnr(video, clip["video"][0].float())
                for a, b in bins:
                    scores[f"{a + 1}-{b}"].append(frames[a:b].mean().item())
            rows[str(length)] = {span: sum(v) / len(v) for span, v in scores.items()}
        report["runs"][ckpt] = {"query_rope": system.hparams.get("query_rope"), "psnr_by_frames": rows}
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = seams(args) if args.mode == "seams" else lengths(args)
    out = Path(args.out) if args.out else Path(args.ckpts[0]).parent / f"long_video_{args.mode}.json"
    atomic_write_json(out, report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
