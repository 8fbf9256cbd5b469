"""Steps per second of a training run as users run it: ``experiments.fit`` for a few steps, its ``summary.json`` read back.

Each measured run is a fresh ``python -m experiments.fit conf=NAME trainer.max_steps=N`` (the whole Lightning loop:
data in the main process, the latent cache, logging and callbacks), after ``--warmup`` unmeasured runs that make
the dataset and fill the latent cache. ``--against REV`` also times another commit's code (a temporary git
worktree) on the same dataset and cache, alternating the two, so a slowdown is measured on one machine at one
time; the pair ratio is this checkout's steps/s over REV's. Prints one table and one JSON object (``--out`` writes
it too). Time nothing else on the machine meanwhile: another job on 2 cores slows a torch run about 4x.

    python -m benchmarks.fit_speed conf=unianimate
    python -m benchmarks.fit_speed conf=unianimate --steps 80 --repeats 3 --against 7c4831e --out fit_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fit_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="conf=NAME and Hydra overrides, as for experiments.fit")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per measured run")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per code version")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per code version first (dataset, latent cache)")
    parser.add_argument("--against", default=None, help="a git revision to time alternately on the same data")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def fit_once(code: Path, overrides: list[str], steps: int, run_dir: Path, cache: Path) -> dict:
    """One ``experiments.fit`` of ``steps`` steps with the code in ``code``; its summary.json."""
    env = os.environ | {"ANIMATE_CACHE": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "experiments.fit", *overrides, f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    summary = run_dir / "summary.json"
    if done.returncode != 0 or not summary.is_file():
        raise RuntimeError(f"{' '.join(command)} (in {code}) failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(summary.read_text())


def summarise(label: str, summaries: list[dict]) -> dict:
    """Median steps/s and peak RSS of one code version's measured runs."""
    rates = [s["steps_per_sec"] for s in summaries]
    return {
        "code": label,
        "steps_per_sec": rates,
        "steps_per_sec_median": round(statistics.median(rates), 4),
        "peak_rss_mb_max": max(s["peak_memory"].get("process_rss_mb", 0.0) for s in summaries),
    }


def table(rows: list[dict]) -> str:
    """The result as a plain-text table."""
    lines = [f"{'code':<24} {'steps/s (median)':>17} {'runs':>24} {'peak RSS MB':>12}"]
    for row in rows:
        runs = ", ".join(f"{r:.3f}" for r in row["steps_per_sec"])
        lines.append(f"{row['code']:<24} {row['steps_per_sec_median']:>17.3f} {runs:>24} {row['peak_rss_mb_max']:>12.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = args.overrides or ["conf=unianimate"]
    cache = Path(os.environ.get("ANIMATE_CACHE", ROOT / ".cache")).resolve()
    with tempfile.TemporaryDirectory(prefix="fit_speed_") as tmp:
        versions = {"this checkout": ROOT}  # label -> code directory
        if args.against:
            worktree = Path(tmp) / "against"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.against], cwd=ROOT, check=True, capture_output=True)
            versions[args.against] = worktree
        try:
            measured: dict[str, list[dict]] = {label: [] for label in versions}
            for index in range(args.warmup + args.repeats):
                for number, (label, code) in enumerate(versions.items()):  # alternated: drift on the machine falls on both alike
                    summary = fit_once(code, overrides, args.steps, Path(tmp) / f"version{number}_run{index}", cache)
                    if index >= args.warmup:
                        measured[label].append(summary)
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    rows = [summarise(label, summaries) for label, summaries in measured.items()]
    result = {"overrides": overrides, "steps": args.steps, "cpus": os.cpu_count(), "versions": rows}
    if args.against:
        result["ratio"] = round(rows[0]["steps_per_sec_median"] / rows[1]["steps_per_sec_median"], 3)
    print(table(rows))
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
