"""The one way to generate held-out clips: a run's system under ``trainer.predict``.

``experiments.generate`` and ``experiments.evaluate ckpt=`` both call :func:`predict_clips`, so
the trainer config (precision such as bf16-mixed, accelerator, devices, strategy) applies to
generation as it does to training, and several devices split the clips. A model is the trained
checkpoint, the same system untrained (its initial weights: for a method whose additions start at
zero, such as UniAnimate's, exactly the pretrained base), the pretrained ``base`` transformer
without fine-tuning, generating as the model it is (unconditionally as a text-to-video base, from
each clip's first frame as an I2V base), or the ``repeat_reference`` baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset

from animate.backbone import resolve_path
from animate.callbacks import ClipWriter
from animate.methods.base import I2V_MASK_CHANNELS, AnimationSystem
from animate.methods.image_to_video import ImageToVideo
from animate.methods.text_to_video import TextToVideo
from animate.parallel import context_parallel_degree
from animate.rollout import RolloutConfig, rollout_config
from experiments.cli import UsageError

log = logging.getLogger(__name__)

MODELS = ("trained", "untrained", "base", "repeat_reference")
KINDS = ("video", "image", "long")


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint file, or a DeepSpeed checkpoint directory (trainer=deepspeed) read as one: its model states' ``module`` as ``state_dict``."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds the run config
    tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else "checkpoint"
    states = path / tag / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise UsageError(f"ckpt={path}: a directory without a DeepSpeed checkpoint ({states} is missing)")
    checkpoint = torch.load(states, map_location="cpu", weights_only=False)
    return checkpoint | {"state_dict": checkpoint.pop("module")}


def resolve_checkpoint(ckpt_path: str) -> Path:
    """A checkpoint path; ``asset:NAME`` is a checkpoint shipped in ``animate/assets`` (``NAME`` or ``NAME.ckpt``)."""
    if not str(ckpt_path).startswith("asset:"):
        return Path(ckpt_path)
    path = resolve_path(str(ckpt_path))
    return path if path.exists() or path.suffix == ".ckpt" else path.with_suffix(".ckpt")


def read_run_checkpoint(ckpt_path: str) -> dict:
    """The raw checkpoint of a run (a path, or ``asset:NAME``); a one-line error when it is missing or holds no run config."""
    path = resolve_checkpoint(ckpt_path)
    if not path.exists():
        raise UsageError(f"ckpt={ckpt_path}: no such checkpoint file")
    checkpoint = read_checkpoint(path)
    if not checkpoint.get("run_config"):
        raise UsageError(f"ckpt={ckpt_path}: no run_config inside (not written by experiments.fit)")
    return checkpoint


def load_run(ckpt_path: str) -> tuple[AnimationSystem, DictConfig, dict]:
    """The trained system of a checkpoint (a path, or ``asset:NAME``), its run config, and the raw checkpoint."""
    checkpoint = read_run_checkpoint(ckpt_path)
    cfg = OmegaConf.create(checkpoint["run_config"])
    system = build_system(cfg)
    system.on_load_checkpoint(checkpoint)
    system.load_state_dict(checkpoint["state_dict"], strict=False)
    return system.eval(), cfg, checkpoint


def build_system(run_cfg: DictConfig) -> AnimationSystem:
    """A freshly initialised system from a run config, seeded as the run was (the untrained baseline)."""
    torch.manual_seed(run_cfg.seed)
    return instantiate(run_cfg.method).eval()


def has_pretrained_base(run_cfg: DictConfig) -> bool:
    """Whether the run fine-tuned a pretrained transformer (``backbone.transformer.path``), so the ``base`` model exists."""
    return bool(run_cfg.backbone.transformer.get("path"))


def base_system(run_cfg: DictConfig) -> AnimationSystem:
    """The run's pretrained transformer without fine-tuning, as the model it is: text-to-video, or an I2V base animating each clip's first frame."""
    if not has_pretrained_base(run_cfg):
        raise UsageError("model base: the run trained a randomly initialised transformer (backbone.transformer.path is null)")
    backbone_cfg = OmegaConf.merge(run_cfg.backbone, {"transformer": {"in_channels": None}})  # the base's own patch embedding
    sampler = OmegaConf.to_container(run_cfg.method.sampler, resolve=True)
    backbone = instantiate(backbone_cfg)
    if backbone.in_channels == 2 * backbone.latent_channels + I2V_MASK_CHANNELS and not backbone.takes_image_tokens:  # conf=base_i2v's export
        return ImageToVideo(backbone, optimizer=None, sampler=sampler | {"guidance": [1.0]}).eval()
    return TextToVideo(backbone, optimizer=None, sampler=sampler | {"guidance": []}).eval()


class HeldoutClips(IterableDataset):
    """The first ``num_clips`` clips of a split in bucketed batches, this rank's share.

    The pipeline is built when iterated, inside ``trainer.predict``, so that under a distributed
    strategy each rank takes its own disjoint share (:meth:`AnimationDataModule.eval_dataset`).
    """

    def __init__(self, datamodule, split: str, num_clips: int, kind: str = "video", by_rank: bool = True):
        self.datamodule = datamodule
        self.split = split
        self.num_clips = num_clips
        self.kind = kind
        self.by_rank = by_rank  # False: every rank reads every clip (context parallel: the ranks share each clip's sequence)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.datamodule.eval_dataset(self.split, self.num_clips, by_rank=self.by_rank, kind=self.kind))


def heldout_loader(run_cfg: DictConfig, split: str, num_clips: int, batch_size: int | None = None, kind: str = "video",
                   by_rank: bool = True) -> DataLoader:
    """A loader of the held-out clips (``kind="video"``), image pairs (``"image"``: pose transfer) or long clips (``"long"``, one per batch) of a run's dataset.

    ``batch_size``: null = the run's.
    """
    if kind not in KINDS:
        raise UsageError(f"kind={kind}: use video (held-out clips), image (held-out image pairs, pose transfer) or long (long clips, chunk by chunk)")
    overrides = {"batch_size": 1 if kind == "long" else batch_size} if batch_size or kind == "long" else {}
    datamodule = instantiate(run_cfg.data, **overrides)
    datamodule.prepare_data()
    return DataLoader(HeldoutClips(datamodule, split, num_clips, kind, by_rank), batch_size=None)



def check_model(model: str) -> None:
    """A one-line error for an unknown model name."""
    if model not in MODELS:
        raise UsageError(f"model {model!r}: valid {', '.join(MODELS)}")


def predict_clips(
    cfg: DictConfig,
    trained: AnimationSystem,
    run_cfg: DictConfig,
    loader: DataLoader,
    out: Path,
    model: str = "trained",
    write_targets: bool = True,
) -> L.Trainer:
    """Generate ``loader``'s clips with ``model`` into ``out/<model>/`` (see :class:`ClipWriter`); returns the trainer.

    Long clips (``kind=long``) go chunk by chunk with the method's rollout (``cfg.rollout`` overrides
    it), their finished chunks kept in ``out/chunks/<model>/KEY/`` so an interrupted run resumes.
    """
    check_model(model)
    system = build_system(run_cfg) if model == "untrained" else base_system(run_cfg) if model == "base" else trained
    shared_clips = context_parallel_degree(cfg.get("context_parallel")) > 1  # every process works on every clip (context parallel)
    system.prediction = dict(
        steps=cfg.sampler.steps,
        shift=cfg.sampler.shift,
        schedule=cfg.sampler.get("schedule"),
        guidance=list(cfg.sampler.guidance) if cfg.sampler.guidance and model != "base" else None,  # the base has no conditions to guide
        seed=cfg.sampler.seed,
        cache_threshold=cfg.sampler.get("cache_threshold"),
        baseline="repeat_reference" if model == "repeat_reference" else None,
        context_parallel=dict(cfg.context_parallel) if shared_clips else None,
    )
    if getattr(loader.dataset, "kind", "video") == "long":
        system.prediction |= {"rollout": long_rollout(system, cfg), "store_dir": str(out / "chunks" / model)}
    writer = ClipWriter(out, name=model, targets=write_targets, grids=cfg.grids, fps=cfg.fps, every_rank=not shared_clips)
    trainer = instantiate(cfg.trainer, callbacks=[writer], logger=False)
    log.info("generating with the %s model into %s", model, out / model)
    trainer.predict(system, dataloaders=loader, return_predictions=False)
    return trainer


def long_rollout(system: AnimationSystem, cfg: DictConfig) -> RolloutConfig:
    """The method's rollout with the config's ``rollout`` overrides; a one-line error for settings that cannot work."""
    overrides = OmegaConf.to_container(cfg.rollout, resolve=True) if cfg.get("rollout") else None
    try:
        return rollout_config(system, overrides)
    except ValueError as exn:
        raise UsageError(str(exn)) from exn


def end_distributed(trainer: L.Trainer) -> bool:
    """Wait until every rank has written its clips, leave the process group; True on rank zero.

    Scoring then runs on rank zero alone over the written folders, without collective syncs.
    """
    trainer.strategy.barrier()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return trainer.is_global_zero
