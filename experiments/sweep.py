"""Run a W&B sweep file offline, here or on Slurm: ``python -m experiments.sweep sweeps/NAME.yaml``.

The file is W&B's own sweep format: ``wandb sweep FILE`` then ``wandb agent ID`` run it online,
and here the same file runs without a W&B server. W&B's sweep engine (the ``sweeps`` package of
``wandb[sweeps]``) proposes the runs (grid, random, bayes); each run is the file's command
(``experiments.fit conf=NAME key=value ...``, the parameters are config keys) in
``runs/sweeps/NAME/RUN_ID/`` (RUN_ID names the parameter values), followed by the held-out
evaluation its config's ``heldout`` asks for: ``experiments.generate`` on ``heldout.split`` (the
method and its baselines) and, for ``long`` in ``heldout.kinds``, ``experiments.evaluate
kind=long`` (horizons and drift curves). The scores go into the run's W&B run (offline; ``wandb
sync RUN/wandb/offline-*`` uploads) and ``RUN/result.json``, which the notebooks read. Run it
again and finished runs are skipped, an interrupted one resumes from its last checkpoint.

    python -m experiments.sweep sweeps/frameprompt_table1.yaml --dry-run   # the planned runs and their commands
    python -m experiments.sweep sweeps/frameprompt_table1.yaml             # run them here, one after another
    python -m experiments.sweep sweeps/everanimate_table2.yaml --count 4   # at most 4 new runs (random / bayes need it)
    python -m experiments.sweep sweeps/unianimate_ablations.yaml --only variant=none,unianimate_pose_layers_5
        # a slice of a grid: one claim's rows over every seed first (same run folders as the whole grid)
    python -m experiments.sweep sweeps/frameprompt_table1.yaml --archive docs/results/sweeps   # keep the results the notebooks read
    python -m experiments.sweep sweeps/everanimate_table2.yaml --rescore   # recompute result.json from the runs' evaluation files
    python -m experiments.sweep sweeps/frameprompt_table1.yaml --launcher slurm \\
        --launcher-arg hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1
        # every planned run a Slurm job, through Hydra's submitit launcher (experiments.sweep_run)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from common.cli import UsageError
from common.files import atomic_write_json

log = logging.getLogger(__name__)

SWEEP_ROOT = Path("runs/sweeps")
MACROS = ("${env}", "${interpreter}", "${program}", "${args_no_hyphens}")  # the W&B command macros understood here
PARAMETERS, RESULT, PLAN = "parameters.json", "result.json", "plan.json"
LAUNCHERS = {"local": None, "slurm": "submitit_slurm", "submitit_local": "submitit_local"}  # --launcher -> hydra/launcher


@dataclass(frozen=True)
class Sweep:
    """A W&B sweep file: its path and config."""

    path: Path
    config: dict

    @property
    def name(self) -> str:
        """The sweep's ``name``, else the file's stem: its folder under the sweep root."""
        return str(self.config.get("name") or self.path.stem)

    @property
    def metric(self) -> str | None:
        """The metric the sweep optimises (bayes reads it from finished runs)."""
        return (self.config.get("metric") or {}).get("name")


@dataclass(frozen=True)
class PlannedRun:
    """One proposed set of parameter values and the folder it runs in."""

    parameters: dict[str, Any]
    run_dir: Path

    @property
    def overrides(self) -> list[str]:
        """``key=value`` per parameter, formatted as ``wandb agent`` writes ``${args_no_hyphens}``."""
        return [f"{key}={value}" for key, value in self.parameters.items()]


def sweep_engine():
    """W&B's sweep engine (``wandb[sweeps]``), imported without its pydantic-v1 config warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # next_run imports these on first use, and those imports draw random numbers: imported here, before
        # plan() seeds, so the first plan in a process proposes the same runs as every later one
        import sweeps.bayes_search  # noqa: F401
        import sweeps.grid_search  # noqa: F401
        import sweeps.random_search  # noqa: F401
    return sweeps


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: W&B's schema, and a command that passes the parameters as config keys to experiments.fit."""
    sweeps = sweep_engine()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such sweep file")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exn:
        raise UsageError(f"{path}: not YAML ({str(exn).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: a sweep file is a mapping (method, parameters, command, ...)")
    violations = sweeps.schema_violations_from_proposed_config(config)
    if violations:
        raise UsageError(f"{path}: not a valid W&B sweep: {'; '.join(violations)}")
    command = [str(part) for part in config.get("command") or []]
    unknown = [part for part in command if part.startswith("${") and part not in MACROS]
    if unknown or "${args_no_hyphens}" not in command or "experiments.fit" not in command + [str(config.get("program"))]:
        raise UsageError(
            f"{path}: command must run experiments.fit with the parameters as ${{args_no_hyphens}} "
            f"(key=value, this framework's config keys), e.g. [${{env}}, python, -m, experiments.fit, conf=NAME, ${{args_no_hyphens}}]"
            + (f"; unknown macros {unknown}" if unknown else "")
        )
    return Sweep(path, config)


def run_id(parameters: dict[str, Any]) -> str:
    """A stable folder name for one set of parameter values."""
    return hashlib.sha1(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:10]


def plain(value: Any) -> Any:
    """numpy scalars (random and bayes draws) as Python values."""
    return value.item() if isinstance(value, np.generic) else value


def existing_runs(sweep: Sweep, root: Path) -> list:
    """The sweep's runs already in ``root``: finished ones with their metrics (for bayes), the others as crashed."""
    sweeps = sweep_engine()

    runs = []
    for params_file in sorted((root / sweep.name).glob(f"*/{PARAMETERS}")):
        parameters = json.loads(params_file.read_text())
        result_file = params_file.parent / RESULT
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        state = sweeps.RunState.finished if result else sweeps.RunState.crashed
        metrics = (result or {}).get("metrics", {})
        runs.append(sweeps.SweepRun(name=params_file.parent.name, config={k: {"value": v} for k, v in parameters.items()},
                                    state=state, summary_metrics=metrics))
    return runs


def plan(sweep: Sweep, root: Path, count: int | None = None) -> tuple[list[PlannedRun], int]:
    """The runs to do (unfinished ones first, then new proposals, at most ``count`` new) and how many are finished."""
    sweeps = sweep_engine()

    runs = existing_runs(sweep, root)
    finished = sum(run.state == sweeps.RunState.finished for run in runs)
    todo = [PlannedRun({k: v["value"] for k, v in run.config.items()}, root / sweep.name / run.name)
            for run in runs if run.state != sweeps.RunState.finished]
    method = sweep.config["method"]
    if method != "grid" and count is None:
        raise UsageError(f"{sweep.path}: a {method} sweep proposes runs without end: say how many with --count N")
    new = 0
    while count is None or new < count:
        seed = int(run_id({"sweep": sweep.name, "runs": len(runs)}), 16) % 2**32  # the same proposals on every machine
        random.seed(seed)
        np.random.seed(seed)
        proposal = sweeps.next_run(sweep.config, runs, validate=True)
        if proposal is None:  # a grid is done
            break
        parameters = {key: plain(value["value"]) for key, value in proposal.config.items()}
        proposal.config = {key: {"value": value} for key, value in parameters.items()}
        proposal.state = sweeps.RunState.running
        proposal.name = run_id(parameters)
        runs.append(proposal)
        todo.append(PlannedRun(parameters, root / sweep.name / proposal.name))
        new += 1
    return todo, finished


def parse_slice(sweep: Sweep, only: list[str]) -> dict[str, list[str]]:
    """``KEY=V1,V2`` arguments as the values kept per parameter, checked against the sweep's parameters."""
    if only and sweep.config["method"] != "grid":
        raise UsageError(f"{sweep.path}: --only slices a grid; a {sweep.config['method']} sweep proposes from all its runs")
    kept = {}
    for item in only:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise UsageError(f"--only {item}: write KEY=VALUE[,VALUE...], e.g. --only variant=none,unianimate_pose_layers_5")
        if key not in sweep.config["parameters"]:
            raise UsageError(f"--only {item}: {key} is not a parameter of {sweep.path} ({', '.join(sweep.config['parameters'])})")
        kept[key] = values.split(",")
    return kept


def in_slice(run: PlannedRun, kept: dict[str, list[str]]) -> bool:
    """Whether the run's values are among the kept ones (compared as ``key=value`` writes them)."""
    return all(str(run.parameters.get(key)) in values for key, values in kept.items())


def fit_command(sweep: Sweep, run: PlannedRun) -> list[str]:
    """The sweep's command for this run (macros expanded as ``wandb agent`` does) in the run's folder, or ``resume=`` it."""
    if (run.run_dir / "last.ckpt").is_file() and not fit_finished(run.run_dir):  # killed, or interrupted (its summary says so)
        return [sys.executable, "-m", "experiments.fit", f"resume={run.run_dir}"]
    expanded = {"${env}": [], "${interpreter}": [sys.executable], "${program}": [str(sweep.config.get("program", ""))],
                "${args_no_hyphens}": run.overrides}
    command = []
    for part in map(str, sweep.config["command"]):
        command += expanded.get(part, [part])
    if command and command[0] == "python":  # this interpreter, as the agent's PATH would give inside the environment
        command[0] = sys.executable
    return command + [f"hydra.run.dir={run.run_dir}", f"run_name={sweep.name}-{run.run_dir.name}"]


def fit_finished(run_dir: Path) -> bool:
    """Whether the run's fit ended normally (Lightning reached max_steps / max_epochs)."""
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "finished"


def run_config(run_dir: Path) -> DictConfig:
    """The config a run's fit composed (``.hydra/config.yaml``)."""
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml")


def evaluation_commands(run_dir: Path, cfg: DictConfig) -> dict[str, list[str]]:
    """The held-out evaluation the run's config asks for (``heldout``): kind -> command."""
    heldout = cfg.get("heldout") or {}
    ckpt = run_dir / "last.ckpt"
    commands = {}
    for kind in heldout.get("kinds", ["video"]):
        if kind == "video":
            commands[kind] = [sys.executable, "-m", "experiments.generate", f"ckpt={ckpt}", f"split={heldout.get('split', 'test')}",
                              f"num_clips={heldout.get('num_clips', 32)}", f"out={run_dir / 'heldout_video'}"]
        elif kind == "long":
            commands[kind] = [sys.executable, "-m", "experiments.evaluate", f"ckpt={ckpt}", "kind=long", f"split={heldout.get('split', 'test')}",
                              f"out={run_dir / 'heldout_long'}", "logger=none"]
        else:
            raise UsageError(f"{run_dir}: heldout.kinds holds {kind!r}; use video and/or long")
    return commands


def long_drift(drift_csv: Path) -> dict[str, float]:
    """Each metric's drift along the long clip (last quarter of the chunks minus the first, :func:`metrics.drift.drift_of`)."""
    if not drift_csv.is_file():
        return {}
    from metrics.drift import drift_of  # here: the metrics package imports torch, the sweep's planning needs none of it

    with drift_csv.open() as f:
        rows = list(csv.DictReader(f))
    return drift_of(rows)


def heldout_scores(run_dir: Path, cfg: DictConfig) -> tuple[dict[str, float], dict[str, str]]:
    """The fit's last logged metrics (``val/psnr_mask``: what a sweep's ``metric`` names) and the evaluation's scores under
    flat W&B-style names (``test/trained/psnr``, ``test_long/trained/psnr@10s``, ``test_long/trained/psnr_drift``, ...), and the
    protocol behind each kind."""
    split = (cfg.get("heldout") or {}).get("split", "test")
    summary = run_dir / "summary.json"
    metrics = dict(json.loads(summary.read_text()).get("metrics", {})) if summary.is_file() else {}
    protocols = {}
    video = run_dir / "heldout_video" / "heldout.json"
    if video.is_file():
        report = json.loads(video.read_text())
        protocols["video"] = report.get("protocol", "unnamed v0")
        for model, values in report["overall"].items():
            metrics |= {f"{split}/{model}/{name}": value for name, value in values.items()}
    long = run_dir / "heldout_long" / "summary.json"
    if long.is_file():
        report = json.loads(long.read_text())
        protocols["long"] = report.get("protocol", "unnamed v0")
        for horizon, values in report["summary"].items():
            suffix = "" if horizon == "full" else f"@{horizon}"
            metrics |= {f"{split}_long/trained/{name}{suffix}": value for name, value in values.items()
                        if isinstance(value, (int, float)) and not name.startswith("clips")}
        metrics |= {f"{split}_long/trained/{name}_drift": value for name, value in long_drift(run_dir / "heldout_long" / "drift.csv").items()}
    return metrics, protocols


def log_to_wandb(run_dir: Path, cfg: DictConfig, parameters: dict[str, Any], metrics: dict[str, float]) -> str | None:
    """Add the sweep parameters (and protocols) and the held-out scores to the fit's W&B run (offline); its id, or None."""
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    if not offline:
        return None
    import wandb

    wandb_id = offline[-1].name.rsplit("-", 1)[-1]
    with wandb.init(id=wandb_id, project=cfg.logger.get("project", "animate"), dir=str(run_dir), mode="offline", resume="allow",
                    settings=wandb.Settings(silent=True)) as wandb_run:
        wandb_run.config.update(parameters, allow_val_change=True)
        wandb_run.summary.update(metrics)
    return wandb_id


def record_scores(run_dir: Path, cfg: DictConfig, parameters: dict[str, Any]) -> tuple[dict[str, float], dict[str, str], str | None]:
    """Read the run's scores and protocols and add them, with the parameters, to its W&B run: metrics, protocols, W&B id."""
    metrics, protocols = heldout_scores(run_dir, cfg)
    wandb_id = log_to_wandb(run_dir, cfg, parameters | {f"protocol/{kind}": name for kind, name in protocols.items()}, metrics)
    return metrics, protocols, wandb_id


def child_environment() -> dict[str, str]:
    """This environment without the handle of a W&B service this process started: each step runs its own."""
    return {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}


def execute(sweep: Sweep, run: PlannedRun) -> dict | None:
    """Fit (or resume) one run, evaluate it and write ``result.json``; the result, or None when a step failed."""
    result_file = run.run_dir / RESULT
    if result_file.is_file():
        log.info("%s: finished, skipped", run.run_dir)
        return json.loads(result_file.read_text())
    run.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.run_dir / PARAMETERS, run.parameters)
    started = time.time()
    if not fit_finished(run.run_dir):
        command = fit_command(sweep, run)
        log.info("%s: %s", run.run_dir, shlex.join(command))
        if subprocess.run(command, env=child_environment()).returncode != 0:
            log.error("%s: the fit failed (see %s); run the sweep again to resume it", run.run_dir, run.run_dir / "training.log")
            return None
    fit_seconds = time.time() - started
    cfg = run_config(run.run_dir)
    for kind, command in evaluation_commands(run.run_dir, cfg).items():
        log.info("%s: %s", run.run_dir, shlex.join(command))
        if subprocess.run(command, env=child_environment()).returncode != 0:
            log.error("%s: the %s evaluation failed; run the sweep again to retry it", run.run_dir, kind)
            return None
    evaluation_seconds = time.time() - started - fit_seconds
    metrics, protocols, wandb_id = record_scores(run.run_dir, cfg, run.parameters)
    result = {"sweep": sweep.name, "sweep_file": str(sweep.path), "run_id": run.run_dir.name, "parameters": run.parameters,
              "overrides": run.overrides, "metrics": metrics, "protocols": protocols, "fit_seconds": round(fit_seconds, 1),
              "evaluation_seconds": round(evaluation_seconds, 1), "wandb_id": wandb_id}
    atomic_write_json(result_file, result)
    return result


def rescore(sweep: Sweep, root: Path) -> list[Path]:
    """Recompute each finished run's scores from its evaluation files (a new derived score, a fixed reader); rewrite result.json."""
    rewritten = []
    for result_file in sorted((root / sweep.name).glob(f"*/{RESULT}")):
        result, run_dir = json.loads(result_file.read_text()), result_file.parent
        metrics, protocols, wandb_id = record_scores(run_dir, run_config(run_dir), result["parameters"])
        atomic_write_json(result_file, result | {"metrics": metrics, "protocols": protocols, "wandb_id": wandb_id or result.get("wandb_id")})
        rewritten.append(result_file)
    return rewritten


ARCHIVED = (RESULT, PARAMETERS, ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "summary.json",
            "heldout_video/heldout.json", "heldout_long/summary.json", "heldout_long/drift.csv")


def archive(sweep: Sweep, root: Path, out: Path) -> list[Path]:
    """Copy what the notebooks read of each finished run (scores, configs, drift curve, one sample grid) to ``out/NAME/RUN_ID``."""
    copied = []
    for result in sorted((root / sweep.name).glob(f"*/{RESULT}")):
        run_dir, target = result.parent, out / sweep.name / result.parent.name
        grids = sorted((run_dir / "heldout_video" / "grids" / "trained").glob("*.png"))[:1]
        for source in [run_dir / name for name in ARCHIVED] + grids:
            if source.is_file():
                destination = target / source.relative_to(run_dir)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
        copied.append(target)
    return copied


def launcher_command(sweep: Sweep, plan_file: Path, runs: int, launcher: str, launcher_args: list[str]) -> list[str]:
    """The Hydra multirun of experiments.sweep_run that submits each planned run as one job."""
    return [sys.executable, "-m", "experiments.sweep_run", "-m", f"plan={plan_file}", f"index={','.join(map(str, range(runs)))}",
            f"hydra/launcher={LAUNCHERS[launcher]}", f"hydra.sweep.dir={plan_file.parent / 'launcher'}", *launcher_args]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="a W&B sweep file (sweeps/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and their commands, run nothing")
    parser.add_argument("--count", type=int, default=None, help="at most this many new runs (needed by random and bayes)")
    parser.add_argument("--only", nargs="*", default=[], metavar="KEY=V1,V2",
                        help="run only the grid's runs with these parameter values, e.g. --only variant=none,unianimate_pose_layers_5")
    parser.add_argument("--root", type=Path, default=SWEEP_ROOT, help=f"where the sweep's runs live (default {SWEEP_ROOT})")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local",
                        help="local: one after another here; slurm: each run a Slurm job (Hydra's submitit launcher)")
    parser.add_argument("--launcher-arg", nargs="*", default=[], help="Hydra overrides for the launcher, e.g. hydra.launcher.partition=gpu")
    parser.add_argument("--archive", type=Path, default=None,
                        help="copy the finished runs' results (what the notebooks read) to ARCHIVE/NAME/ to keep or commit them; runs nothing")
    parser.add_argument("--rescore", action="store_true",
                        help="recompute the finished runs' result.json from their evaluation files (also in an archive: --root ARCHIVE); runs nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict | None]:
    """Plan the sweep, then print (``--dry-run``), run, or submit its runs."""
    args = parse_args(argv)
    sweep = load_sweep(args.sweep)
    if args.launcher != "local" and sweep.config["method"] == "bayes":
        raise UsageError(f"{sweep.path}: bayes proposes each run from the finished ones; run it with --launcher local")
    if args.rescore:
        rewritten = rescore(sweep, args.root)
        print(f"sweep {sweep.name}: {len(rewritten)} finished runs rescored in {args.root / sweep.name}")
        return []
    if args.archive is not None:
        copied = archive(sweep, args.root, args.archive)
        print(f"sweep {sweep.name}: {len(copied)} finished runs copied to {args.archive / sweep.name}")
        return []
    kept = parse_slice(sweep, args.only)
    runs, finished = plan(sweep, args.root, args.count)
    runs = [run for run in runs if in_slice(run, kept)]
    scope = f" (only {' '.join(args.only)})" if kept else ""
    print(f"sweep {sweep.name} ({sweep.config['method']}): {finished} finished, {len(runs)} to run{scope} in {args.root / sweep.name}")
    if args.dry_run:
        for run in runs:
            print(f"{run.run_dir.name}  {' '.join(run.overrides)}\n    {shlex.join(fit_command(sweep, run))}")
        if args.launcher != "local" and runs:
            print(shlex.join(launcher_command(sweep, args.root / sweep.name / PLAN, len(runs), args.launcher, args.launcher_arg)))
        return []
    if args.launcher != "local":
        if not runs:
            return []
        plan_file = args.root / sweep.name / PLAN
        atomic_write_json(plan_file, {"sweep": str(sweep.path), "runs": [{"parameters": r.parameters, "run_dir": str(r.run_dir)} for r in runs]})
        subprocess.run(launcher_command(sweep, plan_file, len(runs), args.launcher, args.launcher_arg), check=True)
        return []
    results = [execute(sweep, run) for run in runs]
    failed = sum(result is None for result in results)
    print(f"sweep {sweep.name}: {len(results) - failed} runs done, {failed} failed (run the same command again to resume them)")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
