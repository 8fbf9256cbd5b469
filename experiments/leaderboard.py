"""Leaderboards from sweep runs: the tables, intervals, verdicts and curves the notebooks show.

Runs come from a folder (``runs/sweeps/NAME``, written by :mod:`experiments.sweep`), several
folders joined by ``os.pathsep`` (a paper whose table spans two sweeps), or, online, from a W&B project; either way one row per run with its method, variant, seed, parameters and
held-out scores (``test/<model>/<metric>``, ``test_long/trained/<metric>@<horizon>``). Every
number shown is a mean over seeds with a 95% Student-t interval; a claim's verdict compares two
entries seed by seed.

    python -m experiments.leaderboard notebooks/leaderboard.ipynb --runs runs/sweeps/leaderboard --out reports/leaderboard.html
        # executes the notebook on those runs and writes it as one self-contained HTML file
    python -m experiments.leaderboard notebooks/onetoall_tables_3_5.ipynb --runs runs/sweeps/onetoall_table3 runs/sweeps/onetoall_tables_3_5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from scipy import stats

from common.files import atomic_write_text

RUNS_ENV = "ANIMATE_RUNS"  # the notebooks read their runs folders from here, joined by os.pathsep (the export sets it)
WANDB_ENV = "ANIMATE_WANDB_PROJECT"  # or, online, a W&B project ("entity/project")
MODELS = ("trained", "untrained", "base", "repeat_reference")  # the method, then the synthetic benchmark's baselines
LOWER_IS_BETTER = ("lpips", "fid", "fvd", "vmae", "v_mae")
MIN_SEEDS = 3  # a verdict needs at least this many seeds paired; fewer give "not enough seeds"
METHOD_NAMES = {"UniAnimate": "UniAnimate-DiT", "FramePrompt": "FramePrompt", "OneToAll": "One-to-All", "EverAnimate": "EverAnimate",
                "TextToVideo": "text-to-video base", "ImageToVideo": "image-to-video base"}


def runs_source(default: str) -> str:
    """Where a notebook reads its runs: ``$ANIMATE_WANDB_PROJECT`` (wandb:PROJECT), else ``$ANIMATE_RUNS``, else ``default``."""
    project = os.environ.get(WANDB_ENV)
    return f"wandb:{project}" if project else os.environ.get(RUNS_ENV, default)


def runs_folders(runs: str | Path | Sequence[str | Path]) -> str:
    """One or several folders of runs as one ``$ANIMATE_RUNS`` value: absolute paths joined by ``os.pathsep``."""
    folders = [runs] if isinstance(runs, (str, Path)) else list(runs)
    return os.pathsep.join(str(Path(folder).resolve()) for part in folders for folder in str(part).split(os.pathsep))


def load_runs(source: str | Path) -> pd.DataFrame:
    """One row per finished run below the folders of ``source`` (``os.pathsep``-joined) or of ``wandb:ENTITY/PROJECT``."""
    if str(source).startswith("wandb:"):
        return load_wandb_runs(str(source).removeprefix("wandb:"))
    rows = []
    result_files = sorted(path for folder in str(source).split(os.pathsep) for path in Path(folder).rglob("result.json"))
    for result_file in result_files:
        result = json.loads(result_file.read_text())
        run_dir = result_file.parent
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
        rows.append({
            "run_dir": str(run_dir), "sweep": result["sweep"], "conf": hydra.job.config_name,
            "method": method_name(cfg.method._target_), "variant": hydra.runtime.choices.get("variant", "none"), "seed": int(cfg.seed),
            **{f"protocol/{kind}": name for kind, name in result.get("protocols", {}).items()},
            **{f"param/{key}": value for key, value in result["parameters"].items()}, **result["metrics"],
        })
    if not rows:
        raise FileNotFoundError(f"{source}: no finished sweep runs (result.json) below it; run python -m experiments.sweep FILE first")
    return pd.DataFrame(rows)


def load_wandb_runs(project: str) -> pd.DataFrame:
    """The same table from a W&B project's finished runs (online: needs an API key)."""
    import wandb

    rows = []
    for run in wandb.Api().runs(project, filters={"state": "finished"}):
        config = dict(run.config)
        rows.append({
            "run_dir": run.url, "sweep": run.sweep.name if run.sweep else "", "conf": config.get("conf", ""),
            "method": method_name(str((config.get("method") or {}).get("_target_", ""))), "variant": config.get("variant", "none"),
            "seed": int(config.get("seed", 0)), **{key: value for key, value in config.items() if key.startswith("protocol/")},
            **{key: value for key, value in run.summary.items() if isinstance(value, (int, float))},
        })
    return pd.DataFrame(rows)


def method_name(target: str) -> str:
    """``animate.methods.frameprompt.FramePrompt`` -> ``FramePrompt`` (the papers' spelling)."""
    name = target.rsplit(".", 1)[-1]
    return METHOD_NAMES.get(name, name)


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of its Student-t interval (NaN for one value) and count, NaNs dropped."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, 1
    sd = statistics.stdev(values)
    return mean, float(stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)), n


def metric_names(runs: pd.DataFrame, prefix: str = "test", model: str = "trained") -> list[str]:
    """The metrics the runs hold under ``prefix/model/``, horizons (``@10s``) included."""
    head = f"{prefix}/{model}/"
    return sorted({column.removeprefix(head) for column in runs.columns if column.startswith(head)})


def leaderboard(runs: pd.DataFrame, by: Sequence[str] = ("method",), prefix: str = "test", models: Sequence[str] = MODELS,
                metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy scores: one row per (entry, model, metric) with the mean, the 95% interval's half-width, the seed count and the protocol."""
    metrics = list(metrics or metric_names(runs, prefix))
    protocol_column = f"protocol/{'long' if prefix.endswith('_long') else 'video'}"
    rows = []
    for key, group in runs.groupby(list(by), sort=False):
        entry = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        entry["protocol"] = ", ".join(sorted(map(str, group[protocol_column].dropna().unique()))) if protocol_column in group else "unrecorded"
        for model in models:
            for metric in metrics:
                column = f"{prefix}/{model}/{metric}"
                if column not in group or group[column].isna().all():
                    continue
                mean, half, n = interval(group[column].tolist())
                rows.append({**entry, "model": model, "metric": metric, "mean": mean, "ci95": half, "seeds": n})
    return pd.DataFrame(rows)


def table(scores: pd.DataFrame, by: Sequence[str] = ("method",), digits: int = 2) -> pd.DataFrame:
    """``mean ± ci95`` strings: one row per entry and model, one column per metric (the leaderboard as shown)."""
    if scores.empty:
        return scores
    shown = scores.assign(value=[f"{m:.{digits}f}" + ("" if math.isnan(h) else f" ± {h:.{digits}f}") for m, h in zip(scores["mean"], scores["ci95"])])
    return shown.pivot_table(index=[*by, "model", "protocol"], columns="metric", values="value", aggfunc="first", sort=False)


@dataclass(frozen=True)
class Claim:
    """A paper's claim: ``better`` beats ``worse`` on ``metric`` (each a filter on the run table's columns)."""

    name: str
    metric: str  # a run-table column, e.g. test/trained/psnr_mask
    better: Mapping[str, object]
    worse: Mapping[str, object]


def select(runs: pd.DataFrame, where: Mapping[str, object]) -> pd.DataFrame:
    """The runs whose columns equal every value of ``where``."""
    mask = pd.Series(True, index=runs.index)
    for column, value in where.items():
        mask &= runs[column].astype(str) == str(value)
    return runs[mask]


def verdict(runs: pd.DataFrame, claim: Claim, confidence: float = 0.95, min_seeds: int = MIN_SEEDS) -> dict:
    """The claim's measured effect (better - worse, signed so that > 0 supports it) with its interval, paired by seed, and the verdict."""
    if claim.metric not in runs:
        return {"claim": claim.name, "metric": claim.metric, "effect": math.nan, "ci95": math.nan, "seeds": 0, "verdict": "not measured"}
    sign = -1.0 if any(name in claim.metric.rsplit("/", 1)[-1] for name in LOWER_IS_BETTER) else 1.0
    better = select(runs, claim.better).groupby("seed")[claim.metric].mean()
    worse = select(runs, claim.worse).groupby("seed")[claim.metric].mean()
    seeds = better.index.intersection(worse.index)
    effect, half, n = interval((sign * (better[seeds] - worse[seeds])).tolist(), confidence)
    if n < min_seeds or math.isnan(half):
        outcome = f"not enough seeds ({n} of {min_seeds})"
    elif effect - half > 0:
        outcome = "reproduced"
    elif effect + half < 0:
        outcome = "refuted"
    else:
        outcome = "inconclusive at this scale"
    return {"claim": claim.name, "metric": claim.metric, "effect": effect, "ci95": half, "seeds": n, "verdict": outcome}


def verdicts(runs: pd.DataFrame, claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim: effect, interval, seeds and verdict."""
    return pd.DataFrame([verdict(runs, claim) for claim in claims])


def drift_curves(runs: pd.DataFrame, by: Sequence[str] = ("method",), metric: str = "psnr") -> pd.DataFrame:
    """Each entry's ``metric`` per drift window along the long test clip, mean over seeds (from ``RUN/heldout_long/drift.csv``)."""
    frames = []
    for _, run in runs.iterrows():
        drift = Path(run["run_dir"]) / "heldout_long" / "drift.csv"
        if drift.is_file():
            curve = pd.read_csv(drift)
            if metric in curve:
                frames.append(curve[["start_s", metric]].assign(**{column: run[column] for column in by}))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames).groupby([*by, "start_s"], sort=False)[metric].mean().reset_index()


def sample_grid(run_dir: str | Path, model: str = "trained") -> Path | None:
    """The first held-out clip's still grid (reference | driving pose | generated | ground truth) of a run."""
    grids = sorted((Path(run_dir) / "heldout_video" / "grids" / model).glob("*.png"))
    return grids[0] if grids else None


def export_html(notebook: str | Path, runs: str | Path | Sequence[str | Path], out: str | Path, timeout: int = 600) -> Path:
    """Execute ``notebook`` on the runs in ``runs`` (one folder or several, headless) and write it as one self-contained HTML file."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    notebook, out = Path(notebook), Path(out)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no such notebook")
    nb = nbformat.read(notebook, as_version=4)
    previous = os.environ.get(RUNS_ENV)
    os.environ[RUNS_ENV] = runs_folders(runs)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(Path.cwd())}}).execute()
    finally:
        if previous is None:
            os.environ.pop(RUNS_ENV, None)
        else:
            os.environ[RUNS_ENV] = previous
    html, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    atomic_write_text(out, html)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m experiments.leaderboard", description="Execute a leaderboard notebook on a folder of runs and export it as HTML.")
    parser.add_argument("notebook", help="notebooks/leaderboard.ipynb or a paper's notebook")
    parser.add_argument("--runs", required=True, nargs="+",
                        help="a folder of sweep runs, e.g. runs/sweeps/leaderboard (several for a table that spans sweeps)")
    parser.add_argument("--out", default=None, help="the HTML file (default: reports/NOTEBOOK.html)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path("reports") / f"{Path(args.notebook).stem}.html"
    path = export_html(args.notebook, args.runs, out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
