"""Callbacks for what is not the system's job: sample videos, throughput, interrupts, run summary."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from common.files import atomic_path, atomic_write_text
from common.video import comparison_grid, frames_uint8, still_grid, write_frames, write_gif, write_mp4, write_png


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and its children (data workers), and of CUDA if used."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    out = {
        "process_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class SaveLastCheckpoint(L.Callback):
    """Save ``last.ckpt`` when training ends and on SIGTERM (preemption, ``kill``) or Ctrl-C.

    Lightning stops at a step boundary on SIGTERM, so the saved state loses no step; periodic
    checkpoints (ModelCheckpoint) cover a SIGKILL. Called on every rank; rank zero writes.
    """

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                print(f"\ninterrupted at step {trainer.global_step}: saved {self.path}; continue with resume={Path(self.path).parent}")


class SampleVideos(L.Callback):
    """Every ``every_n_steps`` (and at the end), animate fixed held-out clips and write them.

    Writes ``samples/step_NNNNNN.mp4`` and ``.gif``: reference | driving pose | generated | ground
    truth, side by side; logs the video to W&B when that logger is active. Rank zero only.
    """

    def __init__(self, directory: str, every_n_steps: int = 500, num_samples: int = 2, steps: int | None = None, fps: int = 12):
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.steps = steps
        self.fps = fps
        self._batch: dict | None = None
        self._last_step = -1

    def _heldout_batch(self, trainer: L.Trainer) -> dict | None:
        """The first validation batch, cut to ``num_samples`` clips (fixed for the whole run)."""
        if self._batch is None:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "heldout_samples"):
                return None
            self._batch = datamodule.heldout_samples("val", self.num_samples)[0]
        return self._batch

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Render and write the samples of the current step (rank zero; under FSDP every rank generates, the weights being sharded)."""
        sharded = is_fsdp(trainer)
        step = trainer.global_step
        if step == self._last_step or not (trainer.is_global_zero or sharded):
            return
        batch = self._heldout_batch(trainer)
        if batch is None:
            return
        self._last_step = step
        batch = move_batch(batch, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with full_weights(trainer):
                generated = pl_module.generate(batch, steps=self.steps)
        finally:
            pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        grid = comparison_grid(batch["reference"], batch["pose"], generated, batch["video"])  # (T, H, W', 3)
        stem = self.directory / f"step_{step:06d}"
        write_mp4(stem.with_suffix(".mp4"), grid, self.fps)
        write_gif(stem.with_suffix(".gif"), grid, self.fps)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log({"samples/video": wandb.Video(str(stem.with_suffix(".mp4")), format="mp4")}, step=step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step > 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module)


def is_fsdp(trainer: L.Trainer) -> bool:
    """Whether the trainer shards the weights with FSDP."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


@contextmanager
def full_weights(trainer: L.Trainer) -> Iterator[None]:
    """Under FSDP the gathered weights on every rank for the block (a collective: all ranks enter); otherwise nothing."""
    if not is_fsdp(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.model, writeback=False):
        yield


def move_batch(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch dict to ``device``."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


class BadSampleReport(L.Callback):
    """At each epoch end, log ``data/bad_samples/<reason>`` and print one line (all ranks gather)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "log_bad_samples"):
            datamodule.log_bad_samples(pl_module)


class Throughput(L.Callback):
    """Logs ``train/steps_per_sec`` and ``train/clips_per_sec`` over the last ``window`` steps."""

    def __init__(self, window: int = 10):
        self.window = window
        self._times: list[float] = []
        self._clips: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._times.append(time.perf_counter())
        self._clips.append(int(batch["video"].shape[0]))
        self._times, self._clips = self._times[-self.window - 1 :], self._clips[-self.window - 1 :]
        if len(self._times) > 1:
            elapsed = self._times[-1] - self._times[0]
            pl_module.log("train/steps_per_sec", (len(self._times) - 1) / elapsed, prog_bar=True)
            pl_module.log("train/clips_per_sec", sum(self._clips[1:]) * trainer.world_size / elapsed)


class RunSummary(L.Callback):
    """Writes ``summary.json``: wall time, steps, steps/s, peak memory, final metrics, bad samples."""

    def __init__(self, path: str):
        self.path = path
        self._start = 0.0
        self._start_step = 0
        self._ended = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_start(trainer, pl_module)
        self._ended = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # after a resume restored the step
        self._start = time.perf_counter()
        self._start_step = trainer.global_step

    def summary(self, trainer: L.Trainer, status: str) -> dict:
        """The summary dict for the current state."""
        wall = time.perf_counter() - self._start
        steps = trainer.global_step - self._start_step
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, Tensor) and v.numel() == 1}
        datamodule = trainer.datamodule
        bad = datamodule.bad_sample_report() if datamodule is not None and hasattr(datamodule, "bad_sample_report") else {}
        return {
            "status": status,
            "global_step": trainer.global_step,
            "steps_this_session": steps,
            "wall_time_s": round(wall, 2),
            "steps_per_sec": round(steps / wall, 4) if wall > 0 else None,
            "peak_memory": {k: round(v, 1) for k, v in peak_memory_mb().items()},
            "metrics": metrics,
            "bad_samples": bad,
        }

    @rank_zero_only
    def _write(self, trainer: L.Trainer, status: str) -> None:
        atomic_write_text(self.path, json.dumps(self.summary(trainer, status), indent=2) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "finished")
        self._ended = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # a resume of a run that had already ended trains nothing
        if not self._ended:
            self._write(trainer, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer, f"interrupted: {type(exception).__name__}")



class ClipWriter(L.Callback):
    """Writes what ``trainer.predict`` generates, clip by clip, on every rank (each writes its share).

    ``DIR/<name>/KEY/frame_NNNN.png``: the generated clip, lossless, scored by
    ``experiments.evaluate generated=DIR/<name> target=DIR/target``; with ``targets``, the ground
    truth in ``DIR/target/KEY/`` with its sidecars (``KEY.pose.npy``, and ``KEY.mask.npy`` /
    ``KEY.plate.npy`` where the batch has a real person mask / background plate); with ``grids``, ``DIR/grids/<name>/KEY.mp4``: reference |
    driving pose | generated | ground truth, and ``KEY.png``: ``still_frames`` evenly spaced frames of it, top to bottom.
    """

    def __init__(
        self, directory: str | os.PathLike, name: str = "generated", targets: bool = True, grids: bool = True, fps: float = 12, still_frames: int = 4,
        every_rank: bool = True,
    ):
        self.every_rank = every_rank  # False: rank zero writes (context parallel: every rank holds the same clips)
        self.directory = Path(directory)
        self.name = name
        self.targets = targets
        self.grids = grids
        self.fps = fps
        self.still_frames = still_frames

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: dict, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not (self.every_rank or trainer.is_global_zero):
            return
        generated = outputs["generated"].float().cpu()
        for index, key in enumerate(outputs["key"]):
            write_frames(self.directory / self.name / key, frames_uint8(generated[index]))
            if self.targets:
                self.write_target(batch, index, key)
            if self.grids:
                grid = comparison_grid(*(batch[k][index : index + 1] for k in ("reference", "pose")), generated[index : index + 1], batch["video"][index : index + 1])
                write_mp4(self.directory / "grids" / self.name / f"{key}.mp4", grid, self.fps)
                write_png(self.directory / "grids" / self.name / f"{key}.png", still_grid(grid, self.still_frames))

    def write_target(self, batch: dict, index: int, key: str) -> None:
        """The ground-truth clip and its sidecars in the shard format (docs/ARCHITECTURE.md)."""
        target = self.directory / "target"
        write_frames(target / key, frames_uint8(batch["video"][index]))
        if batch.get("keypoints") is not None:
            with atomic_path(target / f"{key}.pose.npy") as tmp, open(tmp, "wb") as file:
                np.save(file, batch["keypoints"][index].float().cpu().numpy())
        real_mask = batch.get("has_person_mask")
        if batch.get("person_mask") is not None and (real_mask is None or bool(real_mask[index])):
            with atomic_path(target / f"{key}.mask.npy") as tmp, open(tmp, "wb") as file:
                np.save(file, np.packbits(batch["person_mask"][index].bool().cpu().numpy(), axis=-1))
        if batch.get("plate") is not None and bool(batch["has_plate"][index]):
            with atomic_path(target / f"{key}.plate.npy") as tmp, open(tmp, "wb") as file:
                np.save(file, frames_uint8(batch["plate"][index][:, None])[0])
