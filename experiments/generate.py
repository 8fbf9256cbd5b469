"""Animate held-out clips with a trained run and score them against simple baselines.

``python -m experiments.generate ckpt=RUN/last.ckpt [split=test] [num_clips=8] [steps=...]``
writes ``RUN/generate_<split>/<key>.mp4`` (reference | driving pose | generated | ground truth)
and ``heldout.json``: PSNR over the frame and inside the character's mask for the trained model,
the same model untrained (its initial weights), and "repeat the reference frame".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from animate.callbacks import atomic_write_text, move_batch
from animate.methods.base import AnimationSystem, to_unit
from common.video import comparison_grid, write_mp4
from experiments.cli import UsageError, run
from metrics.evaluation import resolve_device
from metrics.pixel import PSNR, MaskedPSNR

log = logging.getLogger(__name__)


def load_run(ckpt_path: str, device: torch.device) -> tuple[AnimationSystem, DictConfig, dict]:
    """The system of a checkpoint, its run config, and the raw checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UsageError(f"ckpt={ckpt_path}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds the run config
    if not checkpoint.get("run_config"):
        raise UsageError(f"ckpt={ckpt_path}: no run_config inside (not written by experiments.fit)")
    cfg = OmegaConf.create(checkpoint["run_config"])
    system = build_system(cfg, device)
    system.on_load_checkpoint(checkpoint)
    system.load_state_dict(checkpoint["state_dict"], strict=False)
    return system.eval(), cfg, checkpoint


def build_system(cfg: DictConfig, device: torch.device) -> AnimationSystem:
    """A freshly initialised system from a run config (the untrained baseline)."""
    return instantiate(cfg.method).to(device).eval()


def repeat_reference(batch: dict) -> torch.Tensor:
    """The "repeat the reference frame" baseline: (B, 3, T, H, W)."""
    return batch["reference"][:, :, None].expand_as(batch["video"])


def score(name: str, metrics: dict, video: torch.Tensor, batch: dict, per_clip: dict) -> None:
    """Update the metrics of ``name`` with one batch and record per-clip values."""
    generated, target = to_unit(video), to_unit(batch["video"])
    for metric_name, metric in metrics[name].items():
        metric.update(generated, target, person_mask=batch["person_mask"])
        for key, value in zip(batch["key"], metric.last_clip_values.tolist()):
            per_clip.setdefault(key, {}).setdefault(name, {})[metric_name] = value


def summarise(metrics: dict) -> dict:
    """Mean of every metric of every model."""
    out = {}
    for name, named in metrics.items():
        out[name] = {}
        for metric_name, metric in named.items():
            value = metric.compute()
            out[name][metric_name] = float(value[metric.name] if isinstance(value, dict) else value)
    return out


def generate(cfg: DictConfig) -> dict:
    """Render and score held-out clips of a checkpoint."""
    device = resolve_device(cfg.device)
    system, run_cfg, _ = load_run(cfg.ckpt, device)
    out = Path(cfg.out) if cfg.out else Path(cfg.ckpt).parent / f"generate_{cfg.split}"
    datamodule = instantiate(run_cfg.data)
    datamodule.prepare_data()
    models = {"trained": system}
    if cfg.baselines:
        torch.manual_seed(run_cfg.seed)
        models["untrained"] = build_system(run_cfg, device)
    names = list(models) + (["repeat_reference"] if cfg.baselines else [])
    metrics = {name: {"psnr": PSNR().to(device), "psnr_mask": MaskedPSNR().to(device)} for name in names}
    per_clip: dict = {}
    sampler = dict(steps=cfg.steps, shift=cfg.shift, guidance=list(cfg.guidance) if cfg.guidance else None, seed=cfg.seed)
    batches = datamodule.heldout_samples(cfg.split, cfg.num_clips)
    for batch in tqdm(batches, desc=f"generate {cfg.split}", unit="batch"):
        batch = move_batch(batch, device)
        for name, model in models.items():
            video = model.generate(batch, **sampler)
            score(name, metrics, video, batch, per_clip)
            if name == "trained":
                for i, key in enumerate(batch["key"]):
                    grid = comparison_grid(batch["reference"][i : i + 1], batch["pose"][i : i + 1], video[i : i + 1], batch["video"][i : i + 1])
                    write_mp4(out / f"{key}.mp4", grid, cfg.fps)
        if cfg.baselines:
            score("repeat_reference", metrics, repeat_reference(batch), batch, per_clip)
    report = {"ckpt": str(cfg.ckpt), "split": cfg.split, "clips": len(per_clip), "sampler": sampler, "overall": summarise(metrics), "per_clip": per_clip}
    atomic_write_text(out / "heldout.json", json.dumps(report, indent=2) + "\n")
    print(format_table(report["overall"]))
    print(f"wrote {len(per_clip)} videos and heldout.json to {out}")
    return report


def format_table(overall: dict) -> str:
    """A small text table of the overall numbers."""
    lines = [f"{'model':<18}{'psnr':>8}{'psnr_mask':>11}"]
    for name, values in overall.items():
        lines.append(f"{name:<18}{values['psnr']:>8.2f}{values['psnr_mask']:>11.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    run(generate, default_conf="generate")
