"""One planned run of an offline sweep, for Hydra's launchers: ``python -m experiments.sweep_run -m plan=PLAN index=0,1,...``.

``python -m experiments.sweep FILE --launcher slurm`` writes the plan and starts this multirun with
``hydra/launcher=submitit_slurm``: each index becomes one Slurm job that fits and evaluates its
run exactly as the local runner does (:func:`experiments.sweep.execute`).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from common.cli import UsageError
from experiments.cli import run
from experiments.sweep import PlannedRun, execute, load_sweep


def run_planned(cfg: DictConfig) -> dict | None:
    """Fit and evaluate run ``cfg.index`` of the plan ``cfg.plan``."""
    plan = json.loads(Path(cfg.plan).read_text())
    if not 0 <= cfg.index < len(plan["runs"]):
        raise UsageError(f"index={cfg.index}: {cfg.plan} plans {len(plan['runs'])} runs")
    planned = plan["runs"][cfg.index]
    result = execute(load_sweep(plan["sweep"]), PlannedRun(planned["parameters"], Path(planned["run_dir"])))
    if result is None:
        raise RuntimeError(f"{planned['run_dir']}: the run failed; run the sweep again to resume it")
    return result


if __name__ == "__main__":
    run(run_planned, default_conf="sweep_run")
