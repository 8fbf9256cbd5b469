"""Shared command-line handling: ``conf=NAME`` picks an experiment file, ``resume=RUN`` continues one."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import yaml
from hydra.errors import InstantiationException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
NOT_EXPERIMENTS = {"fit", "evaluate", "generate"}  # base configs of the entry points, not experiments


class UsageError(SystemExit):
    """A one-line error for the command line (exit status 2)."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def experiment_names() -> list[str]:
    """Experiments that ``conf=`` accepts: the top-level files of conf/."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem not in NOT_EXPERIMENTS)


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
    run = path if path.is_dir() else path.parent
    while not (run / ".hydra").is_dir() and run != run.parent:
        run = run.parent
    if not (run / ".hydra").is_dir():
        raise UsageError(f"resume={resume}: no .hydra/ config found in it or its parents (is it a run directory?)")
    return run


def resume_arguments(args: list[str]) -> tuple[str | None, list[str]]:
    """For ``resume=RUN``: the run's experiment name and its original overrides, then the new ones."""
    resume = _value(args, "resume")
    if not resume:
        return None, args
    run = resume_dir(resume)
    hydra_cfg = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    original = [o for o in hydra_cfg["overrides"]["task"] if not o.startswith(("resume=", "hydra."))]
    new = [a for a in args if not a.startswith("conf=")]
    return hydra_cfg["job"]["config_name"], original + new + [f"hydra.run.dir={run}"]


def run(task: Callable, argv: list[str] | None = None, default_conf: str | None = None) -> None:
    """Compose ``conf/<conf>.yaml`` with the overrides in ``argv`` and call ``task(cfg)`` through Hydra."""
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
    overrides = [a for a in args if not a.startswith("conf=")]
    sys.argv = [sys.argv[0], f"--config-name={conf}", *overrides]
    hydra.main(config_path=str(CONF_DIR), config_name=conf, version_base="1.3")(reported(task))()


def reported(task: Callable) -> Callable:
    """Turn configuration and missing-file errors into one-line messages instead of tracebacks."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except InstantiationException as exn:
            cause = exn.__cause__ or exn
            raise UsageError(f"{type(cause).__name__}: {_one_line(cause)}") from None
        except FileNotFoundError as exn:
            raise UsageError(_one_line(exn)) from None

    return wrapper


def _one_line(exn: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exn).split())
