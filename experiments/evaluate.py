"""Evaluate generated clips against ground truth, from folders or from a trained run.

    python -m experiments.evaluate generated=DIR target=DIR [metrics=everanimate] [out=DIR] [logger=none]
    python -m experiments.evaluate ckpt=RUN/last.ckpt [split=test] [num_clips=8] [steps=...] [save_videos=true]

Composes conf/evaluate.yaml (metrics from the conf/metrics group, logger from conf/logger). The
folder mode reads clip pairs from disk (:func:`metrics.evaluation.run_evaluation`); the checkpoint
mode rebuilds the run's system and datamodule from the run config inside the checkpoint (as
``experiments.generate`` does), animates the first ``num_clips`` clips of ``split`` and scores them
against their ground truth. Both feed the same scoring path (:func:`metrics.evaluation.evaluate_clips`),
which leaves per_clip.csv, summary.csv and summary.json in ``out``; the results are then logged.
docs/METRICS.md lists the metrics, presets and weight files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from animate.callbacks import move_batch
from common.video import write_mp4
from experiments.cli import CONF_DIR, UsageError, reported
from experiments.generate import load_run
from experiments.training import build_logger
from metrics.evaluation import Clip, clips_from_batch, evaluate_clips, log_report, resolve_device, run_evaluation
from metrics.suite import MetricSuite

log = logging.getLogger(__name__)

MODES = "generated=DIR target=DIR (clips on disk) or ckpt=RUN/last.ckpt [split=test] (a trained run's held-out clips)"


def mode(cfg: DictConfig) -> str:
    """``folders`` or ``ckpt``; a one-line UsageError unless exactly one mode is given in full."""
    given = [key for key in ("generated", "target", "ckpt") if cfg.get(key) is not None]
    if given == ["generated", "target"]:
        return "folders"
    if given == ["ckpt"]:
        return "ckpt"
    raise UsageError(f"evaluate takes either {MODES}; given: {', '.join(given) or 'neither'}")


def save_clip(clip: Clip, directory: Path, fps: float) -> None:
    """``generated/NAME.mp4`` and ``target/NAME.mp4`` with the target's sidecars, re-scorable by the folder mode."""
    for side, video in (("generated", clip.generated), ("target", clip.target)):
        write_mp4(directory / side / f"{clip.name}.mp4", video.permute(1, 2, 3, 0).numpy(), fps)
    if clip.keypoints is not None:
        np.save(directory / "target" / f"{clip.name}.pose.npy", clip.keypoints.numpy().astype(np.float32))
    if clip.person_mask is not None:
        np.save(directory / "target" / f"{clip.name}.mask.npy", np.packbits(clip.person_mask.numpy(), axis=-1))


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Generate the first ``num_clips`` clips of ``split`` with the checkpoint's system and score them."""
    device = resolve_device(cfg.device)
    system, run_cfg, checkpoint = load_run(cfg.ckpt, device)
    datamodule = instantiate(run_cfg.data)
    datamodule.prepare_data()
    batches = datamodule.heldout_samples(cfg.split, cfg.num_clips)
    total = sum(len(batch["key"]) for batch in batches)
    if total < cfg.num_clips:
        log.warning("split %s has only %d clip(s); evaluating those (num_clips=%d)", cfg.split, total, cfg.num_clips)
    sampler = dict(steps=cfg.steps, shift=cfg.shift, guidance=list(cfg.guidance) if cfg.guidance else None, seed=cfg.seed)
    log.info("generating and evaluating %d clip(s) of %s with %s", total, cfg.split, ", ".join(cfg.metrics.names))

    def clips(suite: MetricSuite) -> Iterator[Clip]:
        for batch in batches:
            batch = move_batch(batch, device)
            for clip in clips_from_batch(system.generate(batch, **sampler), batch):
                if cfg.save_videos:
                    save_clip(clip, out_dir / "videos", cfg.fps)
                yield clip

    inputs = {
        "ckpt": str(cfg.ckpt),
        "global_step": checkpoint.get("global_step"),
        "split": cfg.split,
        "num_clips": cfg.num_clips,
        "sampler": sampler,
    }
    return evaluate_clips(cfg, out_dir, clips, inputs, total=total)


def evaluate(cfg: DictConfig, out_dir: Path) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Run the mode the config asks for into ``out_dir``; returns the per-clip rows and the summary."""
    if mode(cfg) == "ckpt":
        return evaluate_checkpoint(cfg, out_dir)
    return run_evaluation(cfg, out_dir)


def evaluate_and_log(cfg: DictConfig) -> None:
    """Run the evaluation into Hydra's run directory (``out``) and log it."""
    mode(cfg)  # a usage error before anything is loaded
    rows, summary = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    logger = build_logger(cfg)
    if logger:
        log_report(logger, rows, summary)


main = hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")(reported(evaluate_and_log))


if __name__ == "__main__":
    main()
