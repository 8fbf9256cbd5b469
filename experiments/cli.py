"""The experiments' command line: ``conf=NAME`` picks an experiment file, ``resume=RUN`` continues one.

The runner itself (Hydra, one-line errors) is :mod:`common.cli`, shared with the data tools.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from common import cli
from common.cli import CONF_DIR, UsageError, reported

__all__ = ["CONF_DIR", "NOT_EXPERIMENTS", "REAL_SCALE", "UsageError", "experiment_names", "reported", "resume_arguments", "resume_dir", "run"]

NOT_EXPERIMENTS = {"fit", "evaluate", "export", "generate", "train_vae", "synthetic", "prepare", "sweep_run"}  # base configs of the entry points


REAL_SCALE = "real"  # conf/real/: the papers' recipes on the released Wan checkpoints (conf=real/NAME)


def experiment_names(real_scale: bool = True) -> list[str]:
    """Experiments that ``conf=`` accepts: the top-level files of conf/, then (``real_scale``) those of conf/real/."""
    tiny = sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem not in NOT_EXPERIMENTS)
    return tiny + (sorted(f"{REAL_SCALE}/{p.stem}" for p in (CONF_DIR / REAL_SCALE).glob("*.yaml")) if real_scale else [])


def _value(args: list[str], key: str) -> str | None:
    """The value of ``key=VALUE`` among ``args``, or None."""
    for arg in args:
        if arg.startswith(f"{key}="):
            return arg.split("=", 1)[1]
    return None


def resume_dir(resume: str) -> Path:
    """The run directory of ``resume=`` (a run directory or a checkpoint inside one)."""
    path = Path(resume).expanduser()
    if not path.exists():
        raise UsageError(f"resume={resume}: no such run directory or checkpoint")
    run_dir = path if path.is_dir() else path.parent
    while not (run_dir / ".hydra").is_dir() and run_dir != run_dir.parent:
        run_dir = run_dir.parent
    if not (run_dir / ".hydra").is_dir():
        raise UsageError(f"resume={resume}: no .hydra/ config found in it or its parents (is it a run directory?)")
    return run_dir


def resume_arguments(args: list[str]) -> tuple[str | None, list[str]]:
    """For ``resume=RUN``: the run's experiment name and its original overrides, then the new ones."""
    resume = _value(args, "resume")
    if not resume:
        return None, args
    run_dir = resume_dir(resume)
    hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    original = [o for o in hydra_cfg["overrides"]["task"] if not o.startswith(("resume=", "hydra."))]
    new = [a for a in args if not a.startswith("conf=")]
    return hydra_cfg["job"]["config_name"], original + new + [f"hydra.run.dir={run_dir}"]


def run(task: Callable, argv: list[str] | None = None, default_conf: str | None = None) -> Any:
    """Compose ``conf/<conf>.yaml`` with the overrides in ``argv`` and call ``task(cfg)`` through Hydra; returns its result."""
    args = list(sys.argv[1:] if argv is None else argv)
    relaunched = _value(args, "--config-name")  # Lightning's DDP launcher re-runs the rewritten argv
    if relaunched:
        args = [a for a in args if not a.startswith("--config-name=")] + [f"conf={relaunched}"]
    resumed_conf, args = (None, args) if relaunched else resume_arguments(args)
    conf = _value(args, "conf") or resumed_conf or default_conf
    if conf is None:
        raise UsageError(f"say which experiment: conf=NAME with NAME one of {', '.join(experiment_names())}")
    if not (CONF_DIR / f"{conf}.yaml").exists():
        raise UsageError(f"conf={conf}: no conf/{conf}.yaml; valid: {', '.join(experiment_names())}")
    return cli.run(task, conf, [a for a in args if not a.startswith("conf=")])
