"""Does a checkpoint read its conditions? The person's error on training and held-out clips, and the swap test.

Two measurements that tell, without a long evaluation, whether a method learned appearance
transfer, memorised its training identities, or learned nothing:

- **person error**: the method's own flow-matching regression error on the person's latents (the
  person mask pooled to the latent grid), with every condition given, at fixed flow times and
  noise, on ``--clips`` training clips and as many test clips (identities never seen in
  training), for the checkpoint and for the same system untrained (for a method whose additions
  start at zero, the pretrained base). Fitting shows as the checkpoint's error falling below the
  untrained one on training clips; transfer, as it falling on test clips as well.
- **swap test**: the same driving poses with another identity's reference. A model that reads the
  reference does worse with the wrong one, so the ratio of its error with the right reference to
  its error with the swapped one falls below 1; a model that ignores the reference stays at 1.
  Measured on the denoising error above (cheap) and, with ``--generate N``, on N sampled test
  clips by their per-part colours (:mod:`metrics.parts`) against the real clip.

    python -m benchmarks.learnability runs/unianimate/DATE/checkpoints/last.ckpt
    python -m benchmarks.learnability CKPT --clips 16 --times 0.3 0.6 0.9 --generate 8 --out RUN/learnability.json

Prints a Markdown summary and writes the numbers as JSON (``--out``, default beside the checkpoint).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

from animate.methods.base import AnimationSystem, to_unit
from benchmarks.velocity_error import latent_person_mask, training_sequence
from common.files import atomic_write_json
from experiments.prediction import build_system, load_run
from metrics.parts import part_colour_error

REFERENCE_KEYS = ("reference", "reference_pose", "reference_keypoints", "reference_views")  # what a swap exchanges
DEFAULT_TIMES = (0.3, 0.6, 0.9)


def identity_of(key: str) -> str:
    """The identity part of a sample key (``puppet-s0-test-c00012-clip`` -> ``puppet-s0-test-c00012``; also ``...-clip03``, ``...-pair00-a``)."""
    return re.sub(r"-(?:clip|long)\d*$|-(?:pair\d+-)?[ab]$", "", key)


def heldout_clips(run_cfg, split: str, count: int) -> list[dict]:
    """The first ``count`` clips of ``split`` as one-clip batches (float pixels in [-1, 1]), latent cache keys dropped."""
    datamodule = instantiate(run_cfg.data, batch_size=1, num_workers=0)
    datamodule.prepare_data()
    clips = datamodule.heldout_samples(split, count)
    for clip in clips:
        clip.pop("cache_key", None)  # swapped references must not hit the right reference's cached latents
    return clips


def swap_partners(clips: list[dict]) -> list[int | None]:
    """For each clip, another clip of the same frame size and another identity (the one half the list away first), or None."""
    partners = []
    n = len(clips)
    for i, clip in enumerate(clips):
        order = [(i + n // 2 + k) % n for k in range(n)]
        match = (j for j in order if j != i and clips[j]["video"].shape == clip["video"].shape
                 and identity_of(clips[j]["key"][0]) != identity_of(clip["key"][0]))
        partners.append(next(match, None))
    return partners


def with_reference_of(clip: dict, donor: dict) -> dict:
    """``clip`` with ``donor``'s reference (image, pose, keypoints, views): the same driving poses, another identity."""
    return clip | {key: donor[key] for key in REFERENCE_KEYS if key in clip and key in donor}


@torch.no_grad()
def denoising_errors(system: AnimationSystem, batch: dict, times: list[float], seed: int = 0) -> dict[str, list[float]]:
    """The method's regression error at each flow time on the person's latent cells and on the whole target: {"person": [...], "frame": [...]}."""
    torch.manual_seed(seed)  # methods that draw inside their flow pair (EverAnimate's restorative perturbation) draw alike
    batch, seq = training_sequence(system, batch)
    b = batch["video"].shape[0]
    target_shape = tuple(seq.clean[:, :, seq.target].shape[2:])  # (F, h, w)
    person = latent_person_mask(batch["person_mask"], target_shape, system.backbone.compression.vae_time)  # (B, F, h, w)
    generated = seq.generate[:, seq.target, None, None].float()  # (B, F, 1, 1): held frames carry no error
    noise = torch.randn(seq.clean.shape, generator=torch.Generator().manual_seed(seed))
    errors = {"person": [], "frame": []}
    for t in times:
        torch.manual_seed(seed)
        pair = system.flow_pair(seq, noise, torch.full((b,), float(t)))
        squared = (system(seq, pair.model_input, pair.t) - pair.target)[:, :, seq.target].float().pow(2).mean(1)  # (B, F, h, w)
        for name, weight in (("person", person * generated), ("frame", generated.expand_as(squared))):
            errors[name].append(float((squared * weight).sum() / weight.sum().clamp_min(1e-8)))
    return errors


def clip_errors(system: AnimationSystem, clips: list[dict], times: list[float]) -> list[dict[str, list[float]]]:
    """:func:`denoising_errors` of each clip, its noise seeded by its index."""
    return [denoising_errors(system, clip, times, seed=index) for index, clip in enumerate(clips)]


def mean_errors(runs: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per-clip errors averaged over clips."""
    return {name: [sum(run[name][k] for run in runs) / len(runs) for k in range(len(runs[0][name]))] for name in ("person", "frame")}


def denoising_swap(system: AnimationSystem, clips: list[dict], partners: list[int | None], times: list[float],
                   right: list[dict[str, list[float]]]) -> dict[str, float]:
    """Mean person error with the right reference (``right``: :func:`clip_errors` of ``clips``) and with a swapped one (same noise), and their ratio."""
    pairs = [(i, j) for i, j in enumerate(partners) if j is not None]
    right_person = [sum(right[i]["person"]) / len(times) for i, _ in pairs]
    swapped = [sum(denoising_errors(system, with_reference_of(clips[i], clips[j]), times, seed=i)["person"]) / len(times) for i, j in pairs]
    r, s = sum(right_person) / len(right_person), sum(swapped) / len(swapped)
    return {"clips": len(pairs), "right": r, "swapped": s, "ratio": r / s}


@torch.no_grad()
def generated_swap(system: AnimationSystem, clips: list[dict], partners: list[int | None], count: int) -> dict[str, float]:
    """Per-part colour error of sampled clips against the real clip with the right and a swapped reference (and of repeating the reference)."""
    pairs = [(i, j) for i, j in enumerate(partners) if j is not None][:count]
    totals = {"right": 0.0, "swapped": 0.0, "repeat_reference": 0.0}
    for i, j in pairs:
        clip = clips[i]
        real = to_unit(clip["video"])
        outputs = {
            "right": to_unit(system.generate(clip, seed=i)),
            "swapped": to_unit(system.generate(with_reference_of(clip, clips[j]), seed=i)),
            "repeat_reference": to_unit(clip["reference"][:, :, None].expand_as(clip["video"])),
        }
        for name, video in outputs.items():
            totals[name] += float(part_colour_error(video, real, clip["keypoints"], clip["person_mask"]).mean())
    means = {name: total / max(len(pairs), 1) for name, total in totals.items()}
    return {"clips": len(pairs), **means, "ratio": means["right"] / means["swapped"] if means["swapped"] else float("nan")}


def measure(ckpt: Path, clips: int, times: list[float], generate: int) -> dict:
    """Every number of the report for one checkpoint."""
    trained, run_cfg, _ = load_run(str(ckpt))
    untrained = build_system(run_cfg)
    train_clips = heldout_clips(run_cfg, "train", clips)
    test_clips = heldout_clips(run_cfg, "test", 2 * clips)
    partners = swap_partners(test_clips)
    report = {"checkpoint": str(ckpt), "method": run_cfg.method._target_.rsplit(".", 1)[-1], "clips": clips, "times": times, "errors": {}}
    report["swap_denoising"] = {}
    for name, system in (("trained", trained), ("untrained", untrained)):
        test_errors = clip_errors(system, test_clips, times)  # every test clip once: the first ``clips`` report, all serve the swap test
        report["errors"][name] = {"train": mean_errors(clip_errors(system, train_clips, times)), "test": mean_errors(test_errors[:clips])}
        report["swap_denoising"][name] = denoising_swap(system, test_clips, partners, times, test_errors)
    if generate:
        report["swap_generated"] = generated_swap(trained, test_clips, partners, generate)
    return report


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    times = report["times"]
    lines = [f"{report['method']}: {report['checkpoint']}", "",
             "Person error (the method's regression error on the person's latents), at t = " + ", ".join(f"{t:g}" for t in times) + ":", "",
             "| model | train clips | test clips (unseen identities) |", "|---|---|---|"]
    for name, errors in report["errors"].items():
        cells = [" / ".join(f"{v:.3f}" for v in errors[split]["person"]) for split in ("train", "test")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += ["", "Swap test (another identity's reference, the same driving poses):", "",
              "| measure | clips | right reference | swapped | ratio (right / swapped) |", "|---|---|---|---|---|"]
    for name, swap in report["swap_denoising"].items():
        lines.append(f"| person error, {name} | {swap['clips']} | {swap['right']:.3f} | {swap['swapped']:.3f} | {swap['ratio']:.2f} |")
    if "swap_generated" in report:
        swap = report["swap_generated"]
        lines.append(f"| part colour error of sampled clips, trained | {swap['clips']} | {swap['right']:.3f} | {swap['swapped']:.3f} | {swap['ratio']:.2f} |")
        lines.append(f"| (repeating the reference: {swap['repeat_reference']:.3f}) | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learnability", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path, help="a checkpoint written by experiments.fit")
    parser.add_argument("--clips", type=int, default=8, help="training clips and test clips scored (the swap test draws partners from twice as many test clips)")
    parser.add_argument("--times", type=float, nargs="+", default=list(DEFAULT_TIMES), help="flow times of the denoising errors")
    parser.add_argument("--generate", type=int, default=4, help="test clips sampled with the right and a swapped reference (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: CKPT's run directory/learnability.json)")
    args = parser.parse_args(argv)
    if not args.ckpt.exists():
        raise SystemExit(f"error: {args.ckpt}: no such checkpoint")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args.ckpt, args.clips, args.times, args.generate)
    out = args.out or (args.ckpt.parent.parent if args.ckpt.parent.name == "checkpoints" else args.ckpt.parent) / "learnability.json"
    atomic_write_json(out, report)
    print(markdown(report))
    print(f"\nwritten: {out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
