"""The shared LightningModule: one rectified-flow training and sampling loop for every method.

A method says only how a batch becomes a latent sequence with roles (:meth:`build_sequence`):
which frames are clean conditions, which are generated, which carry loss, and what else enters
the backbone. The base class owns encoding (with the latent cache), noising, the loss, condition
dropout, cumulative CFG, sampling, optimizers and small checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torch import Tensor

from animate.backbone import AttentionBranch, PackedInput, WanBackbone
from animate.flow import euler_sample, flow_loss, guidance_weights, interpolate, sample_time
from animate.latent_cache import LatentCache
from animate.lora import WAN_LORA_TARGETS, add_lora


@dataclass
class LatentSequence:
    """A batch laid out along time with roles, plus what else enters the backbone."""

    clean: Tensor  # (B, C, F, h, w) clean latents (target frames: ground truth, or zeros at inference)
    generate: Tensor  # (B, F) bool: frames that are noised in training and generated at inference
    loss_weight: Tensor  # (B, 1, F, h, w) per-element loss weight (frame roles x region weights)
    target: slice  # latent frames that form the output video
    channel_cond: Tensor | None = None
    injections: dict[int, Tensor] = field(default_factory=dict)
    attention_mask: Tensor | None = None
    frame_ids: Tensor | None = None
    branches: dict[int, AttentionBranch] = field(default_factory=dict)

    def packed(self, latents: Tensor, t: Tensor) -> PackedInput:
        """The backbone input for noisy ``latents`` at per-frame times ``t`` (B, F)."""
        return PackedInput(
            latents=latents,
            t=t,
            channel_cond=self.channel_cond,
            frame_ids=self.frame_ids,
            injections=self.injections,
            attention_mask=self.attention_mask,
            branches=self.branches,
        )

    @staticmethod
    def cat(sequences: list["LatentSequence"]) -> "LatentSequence":
        """Concatenate along the batch (CFG levels in one forward)."""
        first = sequences[0]
        if len(sequences) == 1:
            return first

        def join(name: str, values: list[Any]) -> Any:
            if name == "injections":
                return {k: torch.cat([v[k] for v in values]) for k in values[0]}
            if name == "branches" or values[0] is None or isinstance(values[0], slice):
                return values[0]
            return torch.cat(values)

        return LatentSequence(**{f.name: join(f.name, [getattr(s, f.name) for s in sequences]) for f in fields(first)})


def frames_to_latent_grid(weight: Tensor, latent_hw: tuple[int, int]) -> Tensor:
    """Token-resolution weights (B, F, h/2, w/2) -> latent resolution (B, 1, F, h, w), nearest."""
    return F.interpolate(weight[:, None].float(), size=(weight.shape[1], *latent_hw), mode="nearest")


class AnimationSystem(L.LightningModule):
    """Rectified-flow training and sampling over a :class:`WanBackbone`; subclasses pack batches."""

    #: condition names this method can drop (training dropout and CFG levels)
    conditions: tuple[str, ...] = ()
    #: conditions active at each CFG level (level 0 = unconditional ... level K = all)
    guidance_levels: tuple[tuple[str, ...], ...] = ((),)

    def __init__(
        self,
        backbone: WanBackbone,
        optimizer: Any,
        scheduler: Any = None,
        time_sampling: dict | None = None,
        sampler: dict | None = None,
        condition_dropout: dict | None = None,
        region_weights: bool = True,
        latent_cache: str | None = None,
        val_sample_batches: int = 1,
        metrics: Any = None,
        lora: dict | None = None,
    ):
        super().__init__()
        if lora and lora.get("rank"):
            add_lora(backbone.transformer, rank=lora["rank"], alpha=lora.get("alpha"), targets=lora.get("targets") or WAN_LORA_TARGETS)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.time_sampling = dict(mode="logit_normal", mean=0.0, std=1.0, shift=1.0) | dict(time_sampling or {})
        self.sampler = dict(steps=50, shift=5.0, guidance=[1.0]) | dict(sampler or {})
        self.condition_dropout = {name: 0.0 for name in self.conditions} | dict(condition_dropout or {})
        unknown = set(self.condition_dropout) - set(self.conditions)
        if unknown:
            raise ValueError(f"condition_dropout names {sorted(unknown)} unknown to {type(self).__name__}: valid {list(self.conditions)}")
        self.region_weights = region_weights
        self.latent_cache = LatentCache(latent_cache, namespace=backbone.vae.fingerprint() if latent_cache and backbone.vae else "")
        self.val_sample_batches = val_sample_batches
        self.metrics = metrics  # a metrics.suite.MetricSuite built by Hydra (conf/method/*.yaml), or None
        self.val_loss = MeanMetric()
        self.strict_loading = False  # checkpoints hold trainable weights only; the frozen base comes from config
        if backbone.vae is not None:
            backbone.vae.requires_grad_(False)

    # ----- what a method defines -------------------------------------------------------------
    def latent_names(self, training: bool) -> tuple[str, ...]:
        """Which latents :meth:`build_sequence` needs (``video`` only when training)."""
        raise NotImplementedError

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        """Lay out one batch along time; ``drop[name]`` (B,) bool marks dropped conditions."""
        raise NotImplementedError

    # ----- encoding ------------------------------------------------------------------------------
    def pixels(self, batch: dict, name: str) -> Tensor:
        """Pixel input (B, 3, T, H, W) in [-1, 1] of one latent name."""
        if name == "video":
            return batch["video"]
        if name == "pose":
            return batch["pose"]
        if name == "reference":  # one frame: (B, 3, 1, H, W)
            return batch["reference"][:, :, None]
        if name == "reference_clip":  # Wan I2V: the reference followed by zero frames
            video = batch["video"]
            ref = batch["reference"][:, :, None]
            return torch.cat([ref, torch.zeros_like(video[:, :, 1:])], dim=2)
        raise KeyError(f"unknown latent name {name!r}")

    def encode(self, batch: dict, names: tuple[str, ...]) -> dict[str, Tensor]:
        """VAE latents for ``names``, through the latent cache when configured."""
        vae = self.backbone.vae
        keys = batch.get("cache_key") or [None] * batch["video"].shape[0]
        out = {}
        for name in names:
            if self.latent_cache.enabled and keys[0] is not None:
                out[name] = self.latent_cache.get_or_encode(keys, name, lambda idx, n=name: self.pixels(batch, n)[idx], vae.encode)
            else:
                out[name] = vae.encode(self.pixels(batch, name))
        return out

    def target_latent_shape(self, batch: dict) -> tuple[int, int, int, int]:
        """(C, F, h, w) of the target clip's latents."""
        _, _, frames, height, width = batch["video"].shape
        comp = self.backbone.compression
        return (self.backbone.vae.latent_channels, comp.latent_frames(frames), *comp.latent_size(height, width))

    def region_weight(self, batch: dict, latent_hw: tuple[int, int]) -> Tensor:
        """(B, 1, F, h, w) region weights of the target frames (ones when disabled)."""
        weight = batch["loss_weight"]
        if not self.region_weights:
            weight = torch.ones_like(weight)
        return frames_to_latent_grid(weight, latent_hw)

    # ----- training ------------------------------------------------------------------------------
    def sample_drops(self, batch_size: int) -> dict[str, Tensor]:
        """Training-time condition dropout: name -> (B,) bool."""
        return {name: torch.rand(batch_size, device=self.device) < p for name, p in self.condition_dropout.items()}

    def level_drops(self, level: int, batch_size: int) -> dict[str, Tensor]:
        """Drops that realise CFG level ``level``."""
        active = self.guidance_levels[level]
        return {name: torch.full((batch_size,), name not in active, device=self.device) for name in self.conditions}

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """Rectified-flow loss on the generated frames of one batch."""
        latents = self.encode(batch, self.latent_names(training=True))
        b = batch["video"].shape[0]
        drops = self.sample_drops(b) if generator is None else self.level_drops(len(self.guidance_levels) - 1, b)
        seq = self.build_sequence(batch, latents, drops, training=True)
        t = sample_time(b, **self.time_sampling, generator=generator, device="cpu").to(self.device)
        noise = torch.randn(seq.clean.shape, generator=generator, device="cpu").to(seq.clean)
        t_frames = torch.where(seq.generate, t[:, None], torch.zeros_like(t[:, None]))  # (B, F)
        x_t = interpolate(seq.clean, noise, t_frames)
        velocity = self.backbone(seq.packed(x_t, t_frames))
        return flow_loss(velocity, noise - seq.clean, seq.loss_weight)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(1000 + batch_idx)  # the same t and noise every epoch
        b = batch["video"].shape[0]
        self.val_loss.update(self.loss(batch, generator), weight=b)
        if self.metrics is not None and batch_idx < self.val_sample_batches:
            video = self.generate(batch, seed=batch_idx)
            self.metrics.update(to_unit(video), to_unit(batch["video"]), keypoints=batch.get("keypoints"), person_mask=batch.get("person_mask"))

    def on_validation_epoch_end(self) -> None:
        # every rank computes (and so syncs) the same metrics in the same order, even a rank that
        # drew no validation batch: per-step sync_dist logging would deadlock on uneven shares
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)  # equal on all ranks
        self.val_loss.reset()
        if self.metrics is not None:
            self.log_dict({f"val/{k}": v for k, v in self.metrics.compute().items()}, sync_dist=True)
            self.metrics.reset()

    # ----- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        batch: dict,
        steps: int | None = None,
        shift: float | None = None,
        guidance: list[float] | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Animate a batch: video (B, 3, T, H, W) in [-1, 1]; uses no ground-truth frames."""
        steps = steps or self.sampler["steps"]
        shift = shift if shift is not None else self.sampler["shift"]
        guidance = list(guidance if guidance is not None else self.sampler["guidance"])
        if len(guidance) != len(self.guidance_levels) - 1:
            raise ValueError(f"{type(self).__name__} takes {len(self.guidance_levels) - 1} guidance scale(s), got {guidance}")
        b = batch["video"].shape[0]
        latents = self.encode(batch, self.latent_names(training=False))
        levels = [i for i, c in enumerate(guidance_weights(guidance)) if c != 0.0]
        sequences = {level: self.build_sequence(batch, latents, self.level_drops(level, b), training=False) for level in levels}
        top = sequences[levels[-1]]

        def velocity(x: Tensor, t: Tensor, levels: list[int]) -> Tensor:
            seq = LatentSequence.cat([sequences[level] for level in levels])
            n = len(levels)
            return self.backbone(seq.packed(x.repeat(n, 1, 1, 1, 1), t.repeat(n, 1)))

        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(top.clean.shape, generator=generator).to(top.clean)
        x = euler_sample(velocity, noise, top.clean, top.generate, steps, shift, guidance)
        return self.backbone.vae.decode(x[:, :, top.target])

    # ----- optimisation and checkpoints ---------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def trainable_keys(self) -> set[str]:
        """State-dict keys of trainable parameters."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["latent_cache"] = {"hits": self.latent_cache.hits, "misses": self.latent_cache.misses}
        checkpoint["run_config"] = getattr(self, "run_config", None)  # rebuilds the frozen base in generate

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable weights (e.g. {sorted(missing)[:3]}): was it written by another method or config?")


def keep_samples(x: Tensor, dropped: Tensor) -> Tensor:
    """Zero the samples whose condition is dropped; x is (B, ...), dropped (B,) bool."""
    return x * (~dropped).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def to_unit(video: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (video.float().clamp(-1, 1) + 1) / 2

