"""Build everything a training run needs from a composed config and fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from common.cli import UsageError

log = logging.getLogger(__name__)


def resume_checkpoint(resume: str | None) -> str | None:
    """``resume=`` (a run directory or a .ckpt) -> the checkpoint to continue from."""
    if not resume:
        return None
    path = Path(resume)
    ckpt = path if path.is_file() else path / "last.ckpt"
    if not ckpt.exists():
        raise FileNotFoundError(f"resume={resume}: no checkpoint at {ckpt} (the run saved none yet)")
    return str(ckpt)


def load_initial_weights(system: L.LightningModule, init_from: str) -> str:
    """Start ``system`` from the weights another run trained (``init_from=RUN`` or a .ckpt): a new stage, not a resume.

    Every saved weight must exist in this model with the same shape (a stage adds modules, it does
    not rename them); weights the earlier run did not save keep their initialisation. The loaded
    keys are saved again with this run's checkpoints even where this stage freezes them.
    """
    ckpt = resume_checkpoint(init_from)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    own = system.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise UsageError(f"init_from={init_from}: {len(unknown)} weights of {ckpt} are not in this model (e.g. {unknown[:3]}): a run of another method?")
    mismatched = [k for k in state if state[k].shape != own[k].shape]
    if mismatched:
        k = mismatched[0]
        raise UsageError(f"init_from={init_from}: {len(mismatched)} weights differ in shape (e.g. {k}: {tuple(state[k].shape)} in {ckpt}, {tuple(own[k].shape)} here)")
    system.load_state_dict(state, strict=False)
    system.initialised_keys = frozenset(state)
    log.info("initialised %d weights from %s", len(state), ckpt)
    return ckpt


def keep_earlier_csv_log(log_dir: Path) -> Path | None:
    """Move a resumed run's ``metrics.csv`` to ``metrics.N.csv`` (N = 0, 1, ...), which Lightning's CSV logger would delete."""
    metrics = log_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    kept = log_dir / f"metrics.{len(list(log_dir.glob('metrics.[0-9]*.csv')))}.csv"
    metrics.rename(kept)
    log.info("kept the earlier training log as %s", kept)
    return kept


def build_logger(cfg: DictConfig):
    """The configured logger (W&B offline, csv) or False for ``logger=none``."""
    if not cfg.get("logger"):
        return False
    logger = instantiate(cfg.logger)
    if isinstance(logger, CSVLogger):
        keep_earlier_csv_log(Path(logger.log_dir))
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Instantiate the system, the data and the trainer of a run."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    system = instantiate(cfg.method)
    if cfg.get("init_from"):
        load_initial_weights(system, cfg.init_from)
    system.run_config = OmegaConf.to_container(cfg, resolve=True)
    logger = build_logger(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not logger:  # nothing to log learning rates to (Lightning refuses the monitor without a logger)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return system, datamodule, trainer


def train(cfg: DictConfig) -> None:
    """Fit one run; a crashed or killed run continues with ``resume=RUN``."""
    system, datamodule, trainer = build(cfg)
    ckpt = resume_checkpoint(cfg.get("resume"))
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt)
