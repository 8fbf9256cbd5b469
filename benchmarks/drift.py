"""EverAnimate's long-video claims on the synthetic benchmark's minute-long test clips.

Each entry is ``LABEL=CKPT:STRATEGY`` (a run and a rollout strategy, animate/rollout.py); every
entry rolls out the same long clips with the same seeds, and the report gives, per entry, the
metrics at each horizon (mean and spread over seeds), the drift curve (each metric per chunk) and
the mean wall time of one whole rollout (time it with nothing else running).

- Finding 1 (repeated decode / re-encode degrades even static content, latent carry-over does
  not): one EverAnimate run, ``latent=RUN:latent_carry image=RUN:image_carry``; compare
  ``psnr_background`` per chunk.
- PLP + RFM against image-space carry-over and PLP with plain flow matching:
  ``plp_rfm=RFM_RUN:latent_carry image=RFM_RUN:image_carry plp_fm=FM_RUN:latent_carry`` over 3 seeds.

    python -m benchmarks.drift latent=runs/everanimate/DATE/last.ckpt:latent_carry image=runs/everanimate/DATE/last.ckpt:image_carry \\
        --seeds 0 1 2 --horizons 10 30 60 --out docs/results/everanimate_drift.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from animate.rollout import new_frames_per_chunk, roll_out, rollout_config
from common.files import atomic_write_json
from experiments.prediction import heldout_loader, load_run
from metrics.drift import DriftCurves, line_chart
from metrics.evaluation import Clip, Evaluation, horizons

METRICS = {"names": ["psnr", "psnr_mask", "psnr_background", "ssim", "silhouette_iou"], "frame_chunk": 16, "silhouette_iou": {"threshold": 0.1}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="+", help="LABEL=CKPT:STRATEGY")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--horizons", type=float, nargs="+", default=[10, 30, 60], help="seconds (at the data's frame rate)")
    parser.add_argument("--clips", type=int, default=1, help="long test clips")
    parser.add_argument("--seconds", type=float, default=None, help="only the first seconds of each clip (default: whole)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--chunk-frames", type=int, default=None, help="frames per chunk (default: the run's)")
    parser.add_argument("--out", default=None, help="JSON report (default: beside the first checkpoint); a PNG of the curves beside it")
    return parser.parse_args(argv)


def parse_entry(entry: str) -> tuple[str, str, str]:
    """``LABEL=CKPT:STRATEGY`` -> (label, ckpt, strategy)."""
    label, _, rest = entry.partition("=")
    ckpt, _, strategy = rest.rpartition(":")
    if not (label and ckpt and strategy):
        raise SystemExit(f"{entry!r}: entries are LABEL=CKPT:STRATEGY, e.g. latent=runs/everanimate/DATE/last.ckpt:latent_carry")
    return label, ckpt, strategy


def clip_of(name: str, generated: torch.Tensor, batch: dict) -> Clip:
    """A metrics Clip (uint8) of one generated video (3, T, H, W) in [-1, 1] and its ground truth."""
    to_uint8 = lambda video: ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = generated.shape[1]
    return Clip(name, to_uint8(generated), to_uint8(batch["video"][0, :, :frames]), batch["keypoints"][0, :frames],
                batch["person_mask"][0, :frames].bool(), to_uint8(batch["plate"][0]))


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    entries = [parse_entry(entry) for entry in args.entries]
    report = {"seeds": args.seeds, "entries": {}}
    batches = None
    for label, ckpt, strategy in entries:
        system, run_cfg, _ = load_run(ckpt)
        fps = float(run_cfg.data.synthetic.fps)
        if batches is None:
            batches = list(heldout_loader(run_cfg, "test", args.clips, kind="long"))
            if args.seconds:
                frames = 1 + (int(args.seconds * fps) - 1) // 4 * 4
                batches = [{k: (v[:, :, :frames] if k in ("video", "pose") else v[:, :frames] if k in ("keypoints", "person_mask") else v)
                            for k, v in batch.items()} for batch in batches]
        cfg = rollout_config(system, {"strategy": strategy, "chunk_frames": args.chunk_frames})
        window = new_frames_per_chunk(system, cfg)
        per_seed, curves, seconds = [], DriftCurves(METRICS, window, fps, "cpu"), []
        for seed in args.seeds:
            evaluation = Evaluation(METRICS, horizons(args.horizons, fps), torch.device("cpu"))
            for batch in batches:
                start = time.perf_counter()
                video = roll_out(system, batch, cfg, {"steps": args.steps, "seed": seed}, progress=False)[0]
                seconds.append(time.perf_counter() - start)
                clip = clip_of(batch["key"][0], video, batch)
                evaluation.add(clip)
                curves.add(clip)
            per_seed.append(evaluation.summary())
        names = METRICS["names"]
        summary = {}
        for horizon in per_seed[0]:
            values = {name: [seed[horizon][name] for seed in per_seed if name in seed[horizon]] for name in names}
            summary[horizon] = {name: {"mean": statistics.fmean(v), "std": statistics.pstdev(v)} for name, v in values.items() if v}
        report["entries"][label] = {"ckpt": ckpt, "strategy": strategy, "chunk_frames": cfg.chunk_frames, "window_frames": window,
                                    "frames": int(batches[0]["pose"].shape[2]), "rollout_seconds_mean": statistics.fmean(seconds),
                                    "horizons": summary, "drift": curves.rows(),
                                    "restorative": OmegaConf.to_container(run_cfg.method.get("restorative", {}), resolve=True)}
        print(f"{label}: " + "; ".join(f"{h} " + ", ".join(f"{n} {v['mean']:.2f}" for n, v in values.items()) for h, values in summary.items()))
    out = Path(args.out) if args.out else Path(entries[0][1]).parent / "drift.json"
    atomic_write_json(out, report)
    for name in ("psnr_background", "psnr"):
        series = {label: [row[name] for row in entry["drift"]] for label, entry in report["entries"].items()}
        xs = [row["start_s"] for row in next(iter(report["entries"].values()))["drift"]]
        length = min(len(v) for v in series.values())
        line_chart(out.with_name(f"{out.stem}_{name}.png"), xs[:length], {k: v[:length] for k, v in series.items()},
                   "seconds into the video", f"{name} per chunk, mean over {len(args.seeds)} seed(s)", shared_scale=True)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
