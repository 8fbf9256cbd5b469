"""Evaluate generated clips against ground truth, from folders or from a trained run.

    python -m experiments.evaluate generated=DIR target=DIR [metrics=everanimate] [out=DIR] [logger=none]
    python -m experiments.evaluate ckpt=RUN/last.ckpt [split=test] [num_clips=8] [model=trained] [sampler.steps=...] [trainer=gpu]
    python -m experiments.evaluate ckpt=RUN/last.ckpt kind=long [horizons_s=[10,30,60]] [rollout.strategy=...]

Composes conf/evaluate.yaml (metrics from the conf/metrics group, logger from conf/logger). The
folder mode reads clip pairs from disk (:func:`metrics.evaluation.run_evaluation`); the checkpoint
mode rebuilds the run's system and data from the run config inside the checkpoint, generates the
first ``num_clips`` clips of ``split`` through ``trainer.predict`` (:mod:`experiments.prediction`,
the path ``experiments.generate`` takes) into ``out/clips/`` as lossless frames with the ground
truth and its sidecars, and scores those folders. Either way the reports are per_clip.csv,
summary.csv and summary.json in ``out``; the results are then logged. ``kind=long`` generates the
split's long clips chunk by chunk (:mod:`animate.rollout`, resumable), scores them at the horizons
(default ``long_horizons_s``, at the data's frame rate) and writes drift curves (``drift.csv`` and
``drift.png``: every metric per chunk along the video).
docs/METRICS.md lists the metrics, presets and weight files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from animate.rollout import new_frames_per_chunk
from experiments.cli import CONF_DIR, UsageError, reported
from experiments.prediction import end_distributed, heldout_loader, load_run, long_rollout, predict_clips
from experiments.training import build_logger
from metrics.evaluation import log_report, run_evaluation

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


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> tuple[list[dict], dict[str, dict[str, float]]] | None:
    """Generate the first ``num_clips`` clips of ``split`` with ``trainer.predict`` into ``out/clips/`` and score them there."""
    trained, run_cfg, checkpoint = load_run(cfg.ckpt)
    clips = out_dir / "clips"
    kind = cfg.get("kind", "video")
    loader = heldout_loader(run_cfg, cfg.split, cfg.num_clips, cfg.batch_size, kind)
    trainer = predict_clips(cfg, trained, run_cfg, loader, clips, model=cfg.model)
    if not end_distributed(trainer):
        return None
    folder_cfg = OmegaConf.merge(cfg, {"generated": str(clips / cfg.model), "target": str(clips / "target")}, long_defaults(cfg, run_cfg, trained) if kind == "long" else {})
    provenance = {
        "ckpt": str(cfg.ckpt),
        "model": cfg.model,
        "global_step": checkpoint.get("global_step"),
        "split": cfg.split,
        "num_clips": cfg.num_clips,
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
    }
    return run_evaluation(folder_cfg, out_dir, provenance)


def long_defaults(cfg: DictConfig, run_cfg: DictConfig, system) -> dict:
    """Long clips: the data's own frame rate (the synthetic clips', 12 fps), the default horizons, drift windows of one chunk."""
    synthetic = run_cfg.data.get("synthetic")
    fps = float(synthetic.fps) if synthetic is not None else float(cfg.fps)
    drift = cfg.drift_frames or new_frames_per_chunk(system, long_rollout(system, cfg))
    return {"fps": fps, "horizons_s": list(cfg.horizons_s) or list(cfg.long_horizons_s), "drift_frames": drift}


def evaluate(cfg: DictConfig, out_dir: Path) -> tuple[list[dict], dict[str, dict[str, float]]] | None:
    """Run the mode the config asks for into ``out_dir``; returns the per-clip rows and the summary."""
    if mode(cfg) == "ckpt":
        return evaluate_checkpoint(cfg, out_dir)
    return run_evaluation(cfg, out_dir)


def evaluate_and_log(cfg: DictConfig) -> None:
    """Run the evaluation into Hydra's run directory (``out``) and log it."""
    mode(cfg)  # a usage error before anything is loaded
    result = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    if result is None:  # a non-zero rank of a distributed generation: rank zero scores
        return
    rows, summary = result
    logger = build_logger(cfg)
    if logger:
        log_report(logger, rows, summary)


main = hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")(reported(evaluate_and_log))


if __name__ == "__main__":
    main()
