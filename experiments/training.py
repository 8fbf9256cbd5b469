"""Build everything a training run needs from a composed config and fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

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
