"""The shared LightningModule: one flow-matching training and sampling loop for every method.

A method says how a batch becomes a latent sequence with roles (:meth:`build_sequence`): which
frames are clean conditions, which are generated, which carry loss, and what else enters the
backbone; which pixel inputs it encodes (:meth:`latent_inputs`); and, if it trains on another
flow than plain rectified flow, its flow pair (:meth:`flow_pair`) and the matching sampling rule
(:meth:`hold`). The base class owns encoding (with the latent cache), condition dropout,
cumulative CFG, sampling, prediction, optimizers and small checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from animate.backbone import PackedInput, WanBackbone
from animate.flow import (
    SCHEDULES,
    StepCallback,
    clip_noise,
    euler_sample,
    flow_loss,
    guidance_weights,
    guided_velocity,
    interpolate,
    sample_time,
    training_weight,
)
from animate.latent_cache import LatentCache
from animate.lora import WAN_LORA_TARGETS, add_lora
from animate.rollout import ChunkStore, RolloutConfig, roll_out
from animate.step_cache import FirstBlockCache

FSDP_WRAPPED = "_fsdp_wrapped_module."  # the name part FSDP's units add to their parameters' names (not to state-dict keys)
IMAGE_TOKENS = "reference_image_tokens"  # the encoded entry holding the reference's CLIP tokens (I2V / Animate backbones)
# what a constructor fills in for keys a partial ``time_sampling`` / ``sampler`` leaves out: conf/method_base/default.yaml's values
TIME_SAMPLING_DEFAULTS = dict(mode="logit_normal", mean=0.0, std=1.0, shift=1.0, loss_weighting="none")
SAMPLER_DEFAULTS = dict(steps=20, shift=3.0, guidance=[1.0], cache_threshold=0.0, schedule="diffsynth")

PixelFn = Callable[[dict], Tensor]
"""batch -> pixels (B, 3, T, H, W) in [-1, 1] of one latent input."""


@dataclass
class LatentSequence:
    """A batch laid out along time with roles, plus what else enters the backbone.

    Every tensor is batch-first, so the sequences of several CFG levels concatenate along the
    batch into one forward (:meth:`cat`). A method that needs more per-sample data subclasses it
    and adds fields; tensors, dicts of tensors and equal non-tensor values all concatenate.
    """

    clean: Tensor  # (B, C, F, h, w) clean latents (target frames: ground truth, or zeros at inference)
    generate: Tensor  # (B, F) bool: frames that are noised in training and generated at inference
    loss_weight: Tensor  # (B, 1, F, h, w) per-element loss weight (frame roles x region weights)
    target: slice  # latent frames that form the output video
    channel_cond: Tensor | None = None  # (B, Cc, F, h, w)
    injections: dict[int, Tensor] = field(default_factory=dict)  # block -> (B, L, D)
    attention_mask: Tensor | None = None  # (B, 1, L, L) bool
    frame_ids: Tensor | None = None  # (B, F) RoPE time index
    attention_kwargs: dict[str, Tensor] = field(default_factory=dict)  # name -> (B, ...) read by the method's attention processors
    image_context: Tensor | None = None  # (B, S_img, image_dim) the reference's CLIP tokens (I2V / Animate backbones), zero where it is dropped

    def frame_times(self, t: Tensor) -> Tensor:
        """Per-frame flow time (B, F): ``t`` (B,) on generated frames, 0 on held (clean) frames."""
        return torch.where(self.generate, t[:, None], torch.zeros_like(t[:, None]))

    def packed(self, latents: Tensor, t: Tensor) -> PackedInput:
        """The backbone input for ``latents`` at per-frame times ``t`` (B, F)."""
        return PackedInput(
            latents=latents,
            t=t,
            channel_cond=self.channel_cond,
            frame_ids=self.frame_ids,
            injections=self.injections,
            attention_mask=self.attention_mask,
            attention_kwargs=self.attention_kwargs,
            image_context=self.image_context,
        )

    @classmethod
    def cat(cls, sequences: Sequence[LatentSequence]) -> LatentSequence:
        """Concatenate along the batch (CFG levels in one forward)."""
        if len(sequences) == 1:
            return sequences[0]
        first = sequences[0]
        return type(first)(**{f.name: _join(f.name, [getattr(s, f.name) for s in sequences]) for f in fields(first)})


def _join(name: str, values: list[Any]) -> Any:
    """Batch-concatenate one field's values: tensors, dicts of tensors; anything else must agree."""
    if isinstance(values[0], Tensor):
        return torch.cat(values)
    if isinstance(values[0], dict):
        keys = set(values[0])
        if any(set(v) != keys for v in values):
            raise ValueError(f"LatentSequence.{name}: the sequences have different keys {[sorted(v) for v in values]}")
        return {k: torch.cat([v[k] for v in values]) for k in values[0]}
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"LatentSequence.{name}: the sequences disagree ({values}); it must be batch-shaped or equal")
    return values[0]


@dataclass
class FlowPair:
    """What one training step regresses: the model input at its times, the target and the weight."""

    model_input: Tensor  # (B, C, F, h, w) x_t
    t: Tensor  # (B, F) per-frame flow time of model_input
    target: Tensor  # (B, C, F, h, w) velocity target
    weight: Tensor  # (B, 1, F, h, w) loss weight


def video_pixels(batch: dict) -> Tensor:
    """The target clip (B, 3, T, H, W)."""
    return batch["video"]


def pose_pixels(batch: dict) -> Tensor:
    """The rendered driving poses (B, 3, T, H, W)."""
    return batch["pose"]


def reference_pixels(batch: dict) -> Tensor:
    """The reference image as one frame (B, 3, 1, H, W)."""
    return batch["reference"][:, :, None]


def target_like(batch: dict) -> Tensor:
    """A tensor shaped as the target clip (B, 3, T, H, W): the video, or the driving poses at inference."""
    return batch["video"] if "video" in batch else batch["pose"]


def reference_still_pixels(batch: dict) -> Tensor:
    """The reference held still for the target's length (B, 3, T, H, W): its latents share each target frame's causal-VAE encoding."""
    return batch["reference"][:, :, None].expand_as(target_like(batch))


def reference_clip_pixels(batch: dict) -> Tensor:
    """Wan I2V's conditioning clip: the reference followed by zero frames (B, 3, T, H, W)."""
    video = target_like(batch)
    return torch.cat([batch["reference"][:, :, None], torch.zeros_like(video[:, :, 1:])], dim=2)


I2V_MASK_CHANNELS = 4  # Wan I2V: the first-frame mask folded 4x in time onto channels


def first_frame_mask(batch: int, frames: int, height: int, width: int, channels: int = I2V_MASK_CHANNELS) -> Tensor:
    """Wan I2V mask (B, 4, F, h, w): ones on latent frame 0 (the given image), zeros elsewhere."""
    mask = torch.zeros(batch, channels, frames, height, width)
    mask[:, :, 0] = 1.0
    return mask


def i2v_condition(image_latents: Tensor) -> Tensor:
    """Wan I2V's channel conditioning (B, 4 + C, F, h, w): the first-frame mask, then the latents (B, C, F, h, w) of [image, zero frames]."""
    b, _, f, h, w = image_latents.shape
    return torch.cat([first_frame_mask(b, f, h, w).to(image_latents), image_latents], dim=1)


def frames_to_latent_grid(weight: Tensor, latent_hw: tuple[int, int]) -> Tensor:
    """Token-resolution weights (B, F, h/2, w/2) -> latent resolution (B, 1, F, h, w), nearest."""
    return F.interpolate(weight[:, None].float(), size=(weight.shape[1], *latent_hw), mode="nearest")


def known_annotations(batch: dict) -> dict[str, Tensor]:
    """The metric annotations the batch really has: keypoints, and the person mask and plate when every clip has one."""
    annotations = {"keypoints": batch.get("keypoints")}
    for name, flag in (("person_mask", "has_person_mask"), ("plate", "has_plate")):
        known = batch.get(flag)
        if batch.get(name) is not None and (known is None or bool(torch.as_tensor(known).all())):
            annotations[name] = to_unit(batch[name]) if name == "plate" else batch[name]
    return {name: value for name, value in annotations.items() if value is not None}


class AnimationSystem(L.LightningModule):
    """Flow-matching training and sampling over a :class:`WanBackbone`; subclasses lay out batches."""

    #: condition names this method can drop (training dropout and CFG levels)
    conditions: tuple[str, ...] = ()
    #: conditions active at each CFG level (level 0 = least conditioned ... level K = all)
    guidance_levels: tuple[tuple[str, ...], ...] = ((),)
    #: latent inputs that change from draw to draw (random augmentations): never read from or written to the latent cache
    uncached_latents: frozenset[str] = frozenset()
    #: the long-video strategy of this method (animate.rollout.STRATEGIES); ``rollout`` settings override it
    rollout_strategy: str = "image_carry"
    #: whether chunks are generated from a motion memory in front of the target (EverAnimate) rather than frames held inside it
    carries_memory: bool = False

    def __init__(
        self,
        backbone: WanBackbone,
        optimizer: Any,
        scheduler: Any = None,
        time_sampling: dict | None = None,
        sampler: dict | None = None,
        condition_dropout: dict | None = None,
        region_weights: bool = False,
        latent_cache: str | None = None,
        val_sample_batches: int = 1,
        metrics: Any = None,
        lora: dict | None = None,
        pretrained_lr_scale: float = 1.0,
        rollout: dict | None = None,
    ):
        super().__init__()
        if lora and lora.get("rank"):
            add_lora(backbone.transformer, rank=lora["rank"], alpha=lora.get("alpha"), targets=lora.get("targets") or WAN_LORA_TARGETS)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.time_sampling = TIME_SAMPLING_DEFAULTS | dict(time_sampling or {})
        self.loss_weighting = self.time_sampling.pop("loss_weighting")  # per-sample loss weight of the drawn time (animate.flow.training_weight)
        training_weight(torch.zeros(1), self.loss_weighting)  # checks the weighting's name
        self.sampler = copy.deepcopy(SAMPLER_DEFAULTS) | dict(sampler or {})  # its own guidance list
        if self.sampler["schedule"] not in SCHEDULES:
            raise ValueError(f"sampler.schedule={self.sampler['schedule']!r}: use one of {', '.join(SCHEDULES)} (animate/flow.py)")
        self.step_cache: FirstBlockCache | None = None  # the last sampled trajectory's step cache (its reuse statistics)
        self.condition_dropout = {name: 0.0 for name in self.conditions} | dict(condition_dropout or {})
        unknown = set(self.condition_dropout) - set(self.conditions)
        if unknown:
            raise ValueError(f"condition_dropout names {sorted(unknown)} unknown to {type(self).__name__}: valid {list(self.conditions)}")
        self.region_weights = region_weights
        if pretrained_lr_scale <= 0:
            raise ValueError(f"pretrained_lr_scale={pretrained_lr_scale}: must be > 0 (freeze weights with LoRA instead)")
        self.pretrained_lr_scale = pretrained_lr_scale
        self.latent_cache = LatentCache(latent_cache, namespace=backbone.vae.fingerprint() if latent_cache and backbone.vae else "")
        self.val_sample_batches = val_sample_batches
        self.rollout = dict(rollout or {})  # long videos: animate.rollout.RolloutConfig fields
        self.metrics = metrics  # a metrics.suite.MetricSuite built by Hydra (conf/method/*.yaml), or None
        self.val_loss = MeanMetric()
        self.prediction: dict[str, Any] = dict(steps=None, shift=None, schedule=None, guidance=None, seed=0, baseline=None, cache_threshold=None, context_parallel=None)
        self.strict_loading = False  # checkpoints hold trainable weights only; the frozen base comes from config
        self.initialised_keys: frozenset[str] = frozenset()  # weights loaded from an earlier stage (init_from): saved even when frozen here
        if backbone.vae is not None:
            backbone.vae.requires_grad_(False)

    # ----- what a method defines -------------------------------------------------------------
    def prepare_batch(self, batch: dict, augment: bool) -> dict:
        """What a method derives from a batch before encoding (One-to-All: the outpainting mask); ``augment`` = a training draw."""
        return batch

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        """The VAE latents :meth:`build_sequence` needs: name -> pixel builder (the video only when training)."""
        raise NotImplementedError(f"{type(self).__name__} must say which latents it encodes")

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        """Lay out one batch along time; ``drop[name]`` (B,) bool marks dropped conditions."""
        raise NotImplementedError(f"{type(self).__name__} must lay out its latent sequence")

    def sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        """:meth:`build_sequence`, with the reference's CLIP tokens when the backbone has an image cross-attention."""
        seq = self.build_sequence(batch, latents, drop, training)
        tokens = latents.get(IMAGE_TOKENS)  # (B, S_img, image_dim), from encode()
        if tokens is not None:
            seq.image_context = tokens if "reference" not in drop else keep_samples(tokens, drop["reference"])
        return seq

    # ----- the flow pair: override both for another flow-matching objective --------------------
    def flow_pair(self, seq: LatentSequence, noise: Tensor, t: Tensor) -> FlowPair:
        """Rectified flow on the generated frames: x_t = (1 - t) x0 + t eps, target eps - x0."""
        t_frames = seq.frame_times(t)  # (B, F), 0 on held frames
        x_t = interpolate(seq.clean, noise, t_frames)
        return FlowPair(x_t, t_frames, noise - seq.clean, seq.loss_weight)

    def hold(self, x: Tensor, seq: LatentSequence) -> Tensor:
        """Sampling's counterpart: frames that are not generated carry their clean values at t = 0."""
        return torch.where(seq.generate[:, None, :, None, None], x, seq.clean.to(x.dtype))

    # ----- the forward ---------------------------------------------------------------------------
    def forward(self, seq: LatentSequence, latents: Tensor, t: Tensor) -> Tensor:
        """Velocity (B, C, F, h, w) of ``latents`` laid out as ``seq`` at per-frame times ``t`` (B, F)."""
        return self.backbone(seq.packed(latents, t))

    # ----- encoding ------------------------------------------------------------------------------
    def encode(self, batch: dict, inputs: Mapping[str, PixelFn]) -> dict[str, Tensor]:
        """VAE latents of ``inputs`` (name -> pixel builder), through the latent cache when configured.

        With an image cross-attention in the backbone (I2V, Animate), also the reference's CLIP tokens as ``reference_image_tokens``.
        """
        out = {name: self.encoded(batch, name, pixels, self.backbone.vae.encode) for name, pixels in inputs.items()}
        encoder = self.backbone.image_encoder
        if encoder is not None and self.backbone.takes_image_tokens:  # once per clip, cached under the encoder's own fingerprint
            out[IMAGE_TOKENS] = self.encoded(batch, IMAGE_TOKENS, lambda batch: batch["reference"], encoder, f"{IMAGE_TOKENS}:{encoder.fingerprint()}")
        return out

    def encoded(self, batch: dict, name: str, pixels: PixelFn, encoder: Callable[[Tensor], Tensor], cache_name: str | None = None) -> Tensor:
        """``encoder(pixels(batch))``, through the latent cache (as ``cache_name``) when configured and ``name`` is cacheable."""
        keys = batch.get("cache_key") or [None] * batch["reference"].shape[0]
        if self.latent_cache.enabled and keys[0] is not None and name not in self.uncached_latents:
            return self.latent_cache.get_or_encode(keys, cache_name or name, lambda idx: pixels(batch)[idx], encoder)
        return encoder(pixels(batch))

    def target_latent_shape(self, batch: dict) -> tuple[int, int, int, int]:
        """(C, F, h, w) of the target clip's latents (from the driving poses' shape when there is no video, as at inference)."""
        _, _, frames, height, width = target_like(batch).shape
        comp = self.backbone.compression
        return (self.backbone.vae.latent_channels, comp.latent_frames(frames), *comp.latent_size(height, width))

    def region_weight(self, batch: dict, latent_hw: tuple[int, int]) -> Tensor:
        """(B, 1, F, h, w) region weights of the target frames (ones when disabled or the batch has none, as at inference)."""
        if "loss_weight" not in batch:
            b = batch["reference"].shape[0]
            return torch.ones(b, 1, self.target_latent_shape(batch)[1], *latent_hw, device=batch["reference"].device)
        weight = batch["loss_weight"]
        if not self.region_weights:
            weight = torch.ones_like(weight)
        return frames_to_latent_grid(weight, latent_hw)

    # ----- training ------------------------------------------------------------------------------
    def sample_drops(self, batch_size: int) -> dict[str, Tensor]:
        """Training-time condition dropout: name -> (B,) bool, one independent draw per condition."""
        return {name: torch.rand(batch_size, device=self.device) < p for name, p in self.condition_dropout.items()}

    def level_drops(self, level: int, batch_size: int) -> dict[str, Tensor]:
        """Drops that realise CFG level ``level``."""
        active = self.guidance_levels[level]
        return {name: torch.full((batch_size,), name not in active, device=self.device) for name in self.conditions}

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """The flow-matching loss of one batch (fixed t, noise and full conditions, no augmentation, with ``generator``)."""
        batch = self.prepare_batch(batch, augment=generator is None)
        latents = self.encode(batch, self.latent_inputs(training=True))
        b = batch["video"].shape[0]
        drops = self.sample_drops(b) if generator is None else self.level_drops(len(self.guidance_levels) - 1, b)
        seq = self.sequence(batch, latents, drops, training=True)
        t = sample_time(b, **self.time_sampling, generator=generator, device="cpu").to(self.device)
        noise = torch.randn(seq.clean.shape, generator=generator, device="cpu").to(seq.clean)
        pair = self.flow_pair(seq, noise, t)
        time_weight = training_weight(t, self.loss_weighting, self.time_sampling["shift"])  # (B,)
        return flow_loss(self(seq, pair.model_input, pair.t), pair.target, pair.weight, time_weight)

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
            # real data without person masks or plates: those metrics count the clips as skipped
            self.metrics.update(to_unit(video), to_unit(batch["video"]), **known_annotations(batch), skip_unannotated=True)

    def on_validation_epoch_end(self) -> None:
        # every rank computes (and so syncs) the same metrics in the same order, even a rank that
        # drew no validation batch: per-step sync_dist logging would deadlock on uneven shares
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)  # equal on all ranks
        self.val_loss.reset()
        if self.metrics is not None:
            self.log_dict({f"val/{k}": v for k, v in self.metrics.compute().items()}, sync_dist=True)
            self.metrics.reset()

    # ----- sampling ------------------------------------------------------------------------------
    def sampling_sequences(self, batch: dict, levels: Sequence[int]) -> dict[int, LatentSequence]:
        """One sequence per CFG level, each built with that level's conditions only (held frames included)."""
        batch = self.prepare_batch(batch, augment=False)
        latents = self.encode(batch, self.latent_inputs(training=False))
        b = batch["reference"].shape[0]
        return {level: self.sequence(batch, latents, self.level_drops(level, b), training=False) for level in levels}

    def level_velocity(self, sequences: Mapping[int, LatentSequence], cache_threshold: float | None = None) -> Callable[[Tensor, Tensor, Sequence[int]], Tensor]:
        """(x, t, levels) -> velocities of ``levels`` batched in one forward, each level holding its own frames.

        ``cache_threshold`` > 0: the forwards of this trajectory share a step cache (:mod:`animate.step_cache`),
        kept as :attr:`step_cache` for its statistics.
        """
        threshold = self.sampler.get("cache_threshold", 0.0) if cache_threshold is None else cache_threshold
        self.step_cache = cache = FirstBlockCache(threshold) if threshold else None

        def velocity(x: Tensor, t: Tensor, levels: Sequence[int]) -> Tensor:
            seq = LatentSequence.cat([sequences[level] for level in levels])
            x_levels = torch.cat([self.hold(x, sequences[level]) for level in levels])
            with self.backbone.caching(cache):
                return self(seq, x_levels, t.repeat(len(levels), 1))

        return velocity

    @torch.no_grad()
    def generate(self, batch: dict, **options: Any) -> Tensor:
        """Animate a batch: video (B, 3, T, H, W) in [-1, 1]; uses no ground-truth frames.

        ``options`` are :meth:`sample_latents`'s (steps, shift, schedule, guidance, seed, context); the
        generated target latents, context frames included, are decoded.
        """
        return self.backbone.vae.decode(self.sample_latents(batch, **options))

    @torch.no_grad()
    def sample_latents(
        self,
        batch: dict,
        steps: int | None = None,
        shift: float | None = None,
        guidance: Sequence[float] | None = None,
        seed: int = 0,
        context: Tensor | None = None,
        on_step: StepCallback | None = None,
        cache_threshold: float | None = None,
        schedule: str | None = None,
    ) -> Tensor:
        """The generated target latents (B, C, F, h, w) of a batch (what :meth:`generate` decodes).

        ``context`` (B, C, k, h, w): clean latents that take the place of the first k target
        frames at every step, at t = 0 (One-to-All's token replace, :mod:`animate.rollout`).
        ``on_step``: called with each step's (index, x_t, t, guided velocity) of the whole sequence.
        ``cache_threshold``: step caching (None = ``sampler.cache_threshold``, 0 = off; :mod:`animate.step_cache`).
        ``steps``, ``shift``, ``schedule`` (:data:`animate.flow.SCHEDULES`): None = ``sampler``'s.
        """
        steps = steps or self.sampler["steps"]
        shift = shift if shift is not None else self.sampler["shift"]
        schedule = schedule or self.sampler["schedule"]
        guidance = list(guidance if guidance is not None else self.sampler["guidance"])
        if len(guidance) != len(self.guidance_levels) - 1:
            raise ValueError(f"{type(self).__name__} takes {len(self.guidance_levels) - 1} guidance scale(s), got {guidance}")
        levels = [i for i, c in enumerate(guidance_weights(guidance)) if c != 0.0]
        sequences = self.sampling_sequences(batch, levels)
        if context is not None:
            sequences = {level: with_context(seq, context) for level, seq in sequences.items()}
        top = sequences[levels[-1]]
        noise = clip_noise(top.clean.shape, batch.get("key"), seed).to(top.clean)
        velocity = self.level_velocity(sequences, cache_threshold)
        x = euler_sample(lambda x, t: guided_velocity(velocity, x, t, guidance), self.hold(noise, top), top.generate, steps, shift, on_step, schedule=schedule)
        return self.hold(x, top)[:, :, top.target]

    # ----- long videos (animate.rollout) -----------------------------------------------------------
    def rollout_defaults(self) -> dict[str, Any]:
        """This method's long-video settings: its strategy, then ``rollout`` from the config."""
        return {"strategy": self.rollout_strategy} | self.rollout

    def after_first_chunk(self, batch: dict, video: Tensor, seed: int) -> dict[str, Tensor]:
        """Batch entries the first chunk of a long video leaves for all later chunks (EverAnimate: the identity memory)."""
        return {}

    def on_predict_start(self) -> None:
        """With ``prediction["context_parallel"]`` (``ulysses``, ``ring``): split every sequence over the processes (:mod:`animate.parallel`)."""
        cp = self.prediction.get("context_parallel")
        if not cp or self.backbone.context_parallel is not None:
            return
        from animate.parallel import context_parallel_degree, enable_context_parallel

        degree = context_parallel_degree(cp)
        if degree != self.trainer.world_size:
            raise ValueError(f"context_parallel ulysses x ring = {degree} must equal the processes (trainer devices x nodes = {self.trainer.world_size})")
        if self.sampler["cache_threshold"] or self.prediction.get("cache_threshold"):
            raise ValueError("context_parallel with step caching: the ranks would skip blocks apart; set sampler.cache_threshold=0")
        enable_context_parallel(self.backbone, ulysses_degree=int(cp.get("ulysses", 1)), ring_degree=int(cp.get("ring", 1)))

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """Generated clips (B, 3, T, H, W) in [-1, 1] of one batch, by :attr:`prediction`'s settings.

        ``prediction["baseline"] = "repeat_reference"`` returns the reference frame repeated instead;
        ``prediction["rollout"]`` (a :class:`animate.rollout.RolloutConfig`) generates chunk by chunk.
        """
        options = dict(self.prediction)
        rollout, store_dir = options.pop("rollout", None), options.pop("store_dir", None)
        options.pop("context_parallel", None)  # set up in on_predict_start
        if options.get("cache_threshold") is None:
            options["cache_threshold"] = self.sampler["cache_threshold"]
        if options.pop("baseline") == "repeat_reference":
            video = batch["reference"][:, :, None].expand_as(batch["video"])
        elif rollout is not None:  # long clips, chunk by chunk (finished chunks kept under store_dir/KEY for a resume)
            cfg = rollout if isinstance(rollout, RolloutConfig) else RolloutConfig(**rollout)
            unset = {"cache_threshold": 0, "schedule": None}  # off / the run's: left out, as before these keys existed
            signature = {"rollout": cfg} | {key: value for key, value in options.items() if key not in unset or value != unset[key]}
            store = None if store_dir is None else ChunkStore(Path(store_dir) / "+".join(batch["key"]), signature)
            video = roll_out(self, batch, cfg, options, store)
        else:
            video = self.generate(batch, **options)
        return {"key": list(batch["key"]), "generated": video}

    # ----- optimisation and checkpoints ---------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters: the pretrained transformer's at ``pretrained_lr_scale`` x the learning rate, the new ones at 1 x (one group when equal)."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.pretrained_lr_scale == 1.0:
            return [{"params": trainable, "lr_scale": 1.0}]
        pretrained = {id(p) for _, p in self.backbone.pretrained_parameters()}
        groups = [
            {"params": [p for p in trainable if id(p) not in pretrained], "lr_scale": 1.0},
            {"params": [p for p in trainable if id(p) in pretrained], "lr_scale": self.pretrained_lr_scale},
        ]
        return [group for group in groups if group["params"]]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the global norm; under FSDP through FSDP's own ``clip_grad_norm_`` (the norm over every rank's shards)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.model
        if isinstance(model, FullyShardedDataParallel) and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            model.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        optimizer = self.optimizer_factory([{"params": g["params"]} for g in groups])
        for group, spec in zip(optimizer.param_groups, groups):
            group["lr"] *= spec["lr_scale"]  # the scheduler then scales each group's own rate
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def trainable_keys(self) -> set[str]:
        """State-dict keys of trainable parameters (under FSDP without its wrappers' name parts, as in the gathered state dict)."""
        return {name.replace(FSDP_WRAPPED, "") for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys() | self.initialised_keys
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["latent_cache"] = {"hits": self.latent_cache.hits, "misses": self.latent_cache.misses}
        checkpoint["run_config"] = getattr(self, "run_config", None)  # rebuilds the frozen base in generate

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" not in checkpoint:  # FSDP's strategy has loaded the weights already (and taken them out)
            return
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable weights (e.g. {sorted(missing)[:3]}): was it written by another method or config?")


def with_context(seq: LatentSequence, context: Tensor) -> LatentSequence:
    """``seq`` whose first k target frames are the clean ``context`` latents (B, C, k, h, w), held at t = 0."""
    frames = range(seq.target.start, seq.target.start + context.shape[2])
    if frames.stop > seq.target.stop:
        raise ValueError(f"{context.shape[2]} context latent frames do not fit a target of {seq.target.stop - seq.target.start}")
    clean, generate = seq.clean.clone(), seq.generate.clone()
    clean[:, :, frames.start : frames.stop] = context.to(clean)
    generate[:, frames.start : frames.stop] = False
    return replace(seq, clean=clean, generate=generate)


def keep_samples(x: Tensor, dropped: Tensor) -> Tensor:
    """Zero the samples whose condition is dropped; x is (B, ...), dropped (B,) bool."""
    return x * (~dropped).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def to_unit(video: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (video.float().clamp(-1, 1) + 1) / 2
