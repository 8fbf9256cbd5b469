"""Held-out metrics along a run: ``experiments.generate`` on several of its checkpoints, as one table.

The learning curve a README states for a longer run: each listed step's checkpoint
(``RUN/checkpoints/step_N.ckpt``) generates the same held-out clips with the same seeds, and the
table puts the baselines (the untrained method as step 0, repeating the reference) beside them.
Each step writes ``RUN/heldout_curve/step_N/`` (generate's output: clips, grids, heldout.json); a
re-run skips the steps already scored with the same split and clip count.

    python -m benchmarks.heldout_curve runs/unianimate/DATE --steps 400 800 1600 3000 --num-clips 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common.files import atomic_write_json, atomic_write_text

METRICS = ("psnr", "psnr_mask", "silhouette_iou", "ssim_mask", "fpsnr")
BASELINES = ("untrained", "repeat_reference")
ROOT = Path(__file__).resolve().parent.parent


def checkpoint(run: Path, step: int) -> Path:
    """``run``'s checkpoint of ``step``; a clear error listing the saved steps when there is none."""
    path = run / "checkpoints" / f"step_{step:06d}.ckpt"
    if not path.is_file():
        saved = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.ckpt"))
        raise SystemExit(f"error: {path}: no checkpoint of step {step}; saved steps: {saved or 'none'}")
    return path


def scored(out: Path, split: str, num_clips: int, models: list[str]) -> dict | None:
    """``out/heldout.json`` when it scored ``models`` on ``num_clips`` clips of ``split``, else None."""
    report_path = out / "heldout.json"
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text())
    same = report.get("split") == split and report.get("num_clips") == num_clips and set(models) <= set(report["overall"])
    return report if same else None


def generate(ckpt: Path, out: Path, split: str, num_clips: int, models: list[str], extra: list[str]) -> dict:
    """Run ``python -m experiments.generate`` on one checkpoint; its heldout.json."""
    command = [sys.executable, "-m", "experiments.generate", f"ckpt={ckpt}", f"out={out}", f"split={split}",
               f"num_clips={num_clips}", f"models=[{','.join(models)}]", *extra]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (exit status {result.returncode})")
    return json.loads((out / "heldout.json").read_text())


def curve(run: Path, steps: list[int], split: str, num_clips: int, baselines: list[str], extra: list[str]) -> list[dict]:
    """One row per baseline and per step: ``{"model", "step", "clips", metric: value}``."""
    rows = []
    for index, step in enumerate(steps):
        models = ["trained", *baselines] if index == 0 else ["trained"]
        out = run / "heldout_curve" / f"step_{step}"
        report = scored(out, split, num_clips, models) or generate(checkpoint(run, step), out, split, num_clips, models, extra)
        if index == 0:
            for model in baselines:
                rows.append({"model": model, "step": 0 if model == "untrained" else None, "clips": report["clips"], **report["overall"][model]})
        rows.append({"model": "trained", "step": step, "clips": report["clips"], **report["overall"]["trained"]})
    return rows


def markdown(rows: list[dict]) -> str:
    """The curve as a Markdown table: a row per model and step, a column per metric."""
    metrics = [m for m in METRICS if any(m in row for row in rows)]
    lines = ["| model | step | " + " | ".join(metrics) + " |", "|" + "---|" * (2 + len(metrics))]
    for row in rows:
        step = "" if row["step"] is None else str(row["step"])
        lines.append(f"| {row['model']} | {step} | " + " | ".join(f"{row[m]:.2f}" if m in row else "" for m in metrics) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heldout_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory of experiments.fit (its checkpoints/step_N.ckpt)")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="the checkpoints' steps, in order")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=["untrained", "base", "repeat_reference"],
                        help="generated with the first step's checkpoint")
    argv = sys.argv[1:] if argv is None else argv
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]  # experiments.generate's key=value, anywhere
    parser.epilog = "Any key=value argument is passed to experiments.generate, e.g. sampler.steps=10 or figure=PATH."
    args = parser.parse_args([arg for arg in argv if arg not in overrides])
    rows = curve(args.run, args.steps, args.split, args.num_clips, args.baselines, overrides)
    text = markdown(rows)
    atomic_write_json(args.run / "heldout_curve" / "curve.json", {"split": args.split, "num_clips": args.num_clips, "rows": rows})
    atomic_write_text(args.run / "heldout_curve" / "curve.md", text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
