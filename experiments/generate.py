"""Animate held-out clips with a trained run and score them against simple baselines.

``python -m experiments.generate ckpt=RUN/last.ckpt [split=test] [num_clips=8] [sampler.steps=...]``
generates through ``trainer.predict`` (:mod:`experiments.prediction`; ``trainer=gpu`` and the like
apply) and writes into ``RUN/generate_<split>/``: each model's clips as lossless frames
(``trained/KEY/``, ``untrained/KEY/``, ``base/KEY/`` where the run fine-tuned a pretrained
transformer, ``repeat_reference/KEY/``), the ground truth with its
sidecars (``target/``), comparison grids (``grids/trained/KEY.mp4``: reference | driving pose |
generated | ground truth, and ``KEY.png``: four of its frames), with ``figure=PATH`` the first
``figure_clips`` clips' still grids of the first model side by side (the README's picture), and
``heldout.json``: each model's PSNR over the frame and inside the
character's mask, scored by the evaluation path (:func:`metrics.evaluation.run_evaluation`).

``python -m experiments.generate ckpt=RUN/last.ckpt reference=IMAGE driving=VIDEO_OR_POSES`` animates
your own reference with a driving video or pose file instead (:mod:`experiments.custom_input`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from animate.parallel import context_parallel_degree
from common.files import atomic_write_json
from common.video import side_by_side, write_png
from experiments.cli import UsageError, run
from experiments.custom_input import animate_custom
from experiments.prediction import (
    MODELS,
    check_model,
    end_distributed,
    has_pretrained_base,
    heldout_loader,
    load_run,
    predict_clips,
)
from metrics.evaluation import protocol_of, run_evaluation

log = logging.getLogger(__name__)


def score(cfg: DictConfig, out: Path, model: str) -> dict[str, float]:
    """The whole-clip summary (clip count, ``cfg.metrics``) of ``out/<model>`` against ``out/target`` (reports in ``out/scores/<model>``)."""
    eval_cfg = OmegaConf.create(
        {
            "generated": str(out / model),
            "target": str(out / "target"),
            "metrics": OmegaConf.to_container(cfg.metrics, resolve=True),
            "horizons_s": [],
            "fps": cfg.fps,
            "device": "cpu",
            "on_size_mismatch": "error",
            "on_length_mismatch": "error",
        }
    )
    _, summary = run_evaluation(eval_cfg, out / "scores" / model)
    return summary["full"]


def generate(cfg: DictConfig) -> dict | Path | None:
    """Render and score held-out clips of a checkpoint with each model of ``cfg.models``; with ``reference=`` animate your own inputs."""
    if cfg.reference or cfg.driving:
        if not (cfg.reference and cfg.driving):
            raise UsageError("animating your own inputs takes both reference=IMAGE and driving=VIDEO_OR_POSES")
        return animate_custom(cfg)
    if not cfg.models:
        raise UsageError(f"models=[]: name at least one of {', '.join(MODELS)}")
    for model in cfg.models:
        check_model(model)
    trained, run_cfg, checkpoint = load_run(cfg.ckpt)
    if cfg.get("data"):  # score on another dataset, or make only what held-out scoring reads
        run_cfg = OmegaConf.merge(run_cfg, {"data": OmegaConf.to_container(cfg.data, resolve=True)})
    models = list(cfg.models)
    if "base" in models and not has_pretrained_base(run_cfg):
        log.info("skipping model base: the run did not start from a pretrained transformer")
        models.remove("base")
    if not models:
        raise UsageError(f"models={list(cfg.models)}: nothing to generate for this run")
    out = Path(cfg.out) if cfg.out else Path(cfg.ckpt).parent / (f"generate_{cfg.split}" + {"image": "_images", "long": "_long"}.get(cfg.kind, ""))
    loader = heldout_loader(run_cfg, cfg.split, cfg.num_clips, cfg.batch_size, cfg.kind, by_rank=context_parallel_degree(cfg.get("context_parallel")) == 1)
    for index, model in enumerate(models):
        trainer = predict_clips(cfg, trained, run_cfg, loader, out, model=model, write_targets=index == 0)
    if not end_distributed(trainer):
        return None
    summaries = {model: score(cfg, out, model) for model in models}
    overall = {model: {name: summary[name] for name in cfg.metrics.names} for model, summary in summaries.items()}
    report = {
        "ckpt": str(cfg.ckpt),
        "global_step": checkpoint.get("global_step"),
        "split": cfg.split,
        "kind": cfg.kind,
        "clips": summaries[models[0]]["clips"],
        "num_clips": cfg.num_clips,  # as asked: the split may hold fewer
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "protocol": protocol_of(cfg.metrics),
        "overall": overall,
    }
    atomic_write_json(out / "heldout.json", report)
    if cfg.figure:
        print(f"wrote the figure {write_figure(out / 'grids' / models[0], cfg.figure, cfg.figure_clips)}")
    print(format_table(overall))
    print(f"wrote {report['clips']} clips per model and heldout.json to {out}")
    return report


def write_figure(grids: Path, path: str, clips: int) -> Path:
    """The first ``clips`` still grids in ``grids`` (sorted by key) side by side, as one PNG at ``path``."""
    stills = sorted(grids.glob("*.png"))[:clips]
    if not stills:
        raise UsageError(f"figure={path}: no still grids in {grids} (grids=false?)")
    return write_png(path, side_by_side([np.asarray(Image.open(still).convert("RGB")) for still in stills]))


def format_table(overall: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per model, one column per metric."""
    names = list(next(iter(overall.values())))
    lines = [f"{'model':<18}" + "".join(f"{name:>11}" for name in names)]
    lines += [f"{model:<18}" + "".join(f"{values[name]:>11.2f}" for name in names) for model, values in overall.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    run(generate, default_conf="generate")
