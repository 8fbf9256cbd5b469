"""EverAnimate ("EverAnimate: minute-scale human animation"): persistent latent propagation + restorative flow matching.

A chunk is generated from a context memory laid out in front of it along time, every memory
frame clean at t = 0 and out of the loss::

    [ identity memory (K latent frames) | motion memory (L_m latent frames) | target chunk ]

- **Identity memory** (:meth:`identity_memory`): K views of the identity, each VAE-encoded as
  its own image. At inference (the official order) K - 1 views and the reference last; the views
  missing from the user's input come from the first generated chunk and are then frozen
  (:mod:`animate.rollout`). In training the views are frames of the same video
  (``data.reference_views``), the reference filling the slots they leave, or, with
  ``reference_memory_probability``, the reference in every slot; memory augmentation
  (:func:`augment_views`) shifts and rescales a sample's views by one random affine map, against
  the spatial bias of the memory.
- **Motion memory**: the last L_m latent frames of the previous chunk, reused without decoding
  and re-encoding. Training cuts one clip into memory and target: the latent frames
  ``1 : 1 + L_m`` are the memory and the rest the target; with ``first_chunk_probability`` the
  draw is laid out as a long video's first chunk: the null motion memory (zeros), the reference
  alone in every identity slot, and the whole clip as target. Stage 1 perturbs the memory
  (``motion_noise``).
- **Pose**: the pose video's latents through their own zero-initialised patch embedding, added
  to the target tokens (Wan2.2-Animate's ``pose_patch_embedding``; the transformer's own when it
  has one).
- **Restorative flow matching** (:mod:`animate.restorative_flow`) replaces the flow pair when
  ``restorative.enabled``: the target chunk's pixels perturbed and encoded give ``x0~``.

On a Wan2.2-Animate backbone (``backbone=tiny_animate``, ``wan22_animate_14b``) the memory also
enters Animate's channel conditioning (``y``: a 4-channel mask, 1 on memory frames, and the
memory latents; zeros on the target), the pose goes through the transformer's own
``pose_patch_embedding``, and face crops of the driving frames (the 68 face points' box, area
x 1.3, squared) drive the face adapter (:mod:`animate.modules.face_adapter`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from animate import diffusers_wan as wan
from animate.backbone import WanBackbone
from animate.flow import interpolate
from animate.methods.base import AnimationSystem, FlowPair, LatentSequence, PixelFn, pose_pixels, video_pixels
from animate.modules.face_adapter import FaceAdapterHook, face_motion_tokens
from animate.restorative_flow import DriftPerturbation, check_bell, restoration_coefficient, restorative_target
from common.pose.faces import face_boxes

ANIMATE_MASK_CHANNELS = 4  # Wan-Animate's y: 4 mask channels (the pixel mask folded by the VAE's 4x time) + the condition latents
# The constructor's defaults are conf/method/everanimate.yaml's (tests/test_methods.py compares them): the config is their one source.
MEMORY_AUGMENTATION_DEFAULTS = dict(probability=0.5, scale=[0.8, 1.2], translate=0.1, fill=0.0)
RESTORATIVE_DEFAULTS = dict(enabled=True, form="paper", normalised=True, min_time=0.5, amplitude=1.0, mean=0.5, std=0.5,
                            perturbation=dict(color_shift=0.1, sharpness=0.5, saturation=0.3, probability=0.64))


@dataclass
class EverAnimateSequence(LatentSequence):
    """A latent sequence with the perturbed target for restorative flow matching."""

    perturbed: Tensor | None = None  # (B, C, F, h, w): x0~ on the target frames, x0 elsewhere; None = no restoration
    face_motion: Tensor | None = None  # (B, F, N + 1, D): Wan-Animate's face motion tokens per latent frame (zeros on memory frames)


def identity_pixels(batch: dict) -> Tensor:
    """The identity views as one-frame clips (B * K, 3, 1, H, W): the reference, then ``reference_views``."""
    views = views_of(batch)  # (B, K, 3, H, W)
    return views.flatten(0, 1)[:, :, None]


def views_of(batch: dict) -> Tensor:
    """(B, K, 3, H, W): the reference followed by the batch's extra views (none at plain inference)."""
    reference = batch["reference"][:, None]
    extra = batch.get("reference_views")
    return reference if extra is None else torch.cat([reference, extra.to(reference)], dim=1)


def face_crops(frames: Tensor, keypoints: Tensor, size: int) -> Tensor:
    """Face crops (B, 3, T, size, size) of frames (B, 3, T, H, W) in Wan2.2-Animate's face boxes of keypoints (B, T, 133, 3), resized; zeros without a face."""
    b, _, t, height, width = frames.shape
    boxes, found = face_boxes(keypoints.flatten(0, 1), height, width)  # (B*T, 4) x0, y0, x1, y1 in pixels
    rois = torch.cat([torch.arange(b * t, device=frames.device)[:, None], boxes.to(frames.device)], dim=1).float()
    flat = frames.transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W)
    crops = roi_align(flat.float(), rois, output_size=size, aligned=True) * found.to(frames.device)[:, None, None, None]
    return crops.to(frames.dtype).unflatten(0, (b, t)).transpose(1, 2)


def augment_views(
    views: Tensor, probability: float, scale: tuple[float, float], translate: float, fill: float, generator: torch.Generator | None = None
) -> Tensor:
    """Memory augmentation of views (B, V, 3, H, W): with ``probability`` a sample's views all go through one affine map.

    The map is the official one in ``affine_grid``'s units (the frame spans [-1, 1]): output pixel x samples the view at
    ``s x + (tx, ty)``, s ~ U(scale), tx, ty ~ U(-translate, translate); outside the view: ``fill``.
    """
    b, v, c, height, width = views.shape
    if probability == 0 or v == 0:
        return views
    applied = torch.rand(b, generator=generator) < probability  # (B,)
    s = torch.empty(b).uniform_(*scale, generator=generator)
    shift = torch.empty(b, 2).uniform_(-translate, translate, generator=generator)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = s, s, shift
    theta = theta.repeat_interleave(v, dim=0).to(views.device, torch.float32)  # one map for all of a sample's views
    flat = views.flatten(0, 1).float() - fill  # grid_sample pads with zeros: shifted, the padding is ``fill``
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    moved = (F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill).clamp(-1, 1)
    moved = moved.to(views.dtype).unflatten(0, (b, v))
    return torch.where(applied.to(views.device)[:, None, None, None, None], moved, views)


def memory_slots(reference: Tensor, views: Tensor, k: int, kept: int) -> Tensor:
    """(B, C, K, h, w): the first ``kept`` of ``views`` (B, C, V, h, w), then ``reference`` (B, C, 1, h, w) in the slots left."""
    views = views[:, :, : min(kept, k)]
    return torch.cat([views, reference.expand(-1, -1, k - views.shape[2], -1, -1)], dim=2)


def check_augmentation(aug: dict) -> dict:
    """The memory augmentation settings, rejected with the key's name when they cannot be meant."""
    low, high = aug["scale"]
    if not 0.0 <= aug["probability"] <= 1.0:
        raise ValueError(f"method.memory_augmentation.probability={aug['probability']}: a probability in [0, 1]")
    if not 0 < low <= high:
        raise ValueError(f"method.memory_augmentation.scale={list(aug['scale'])}: a range [low, high] with 0 < low <= high")
    if aug["translate"] < 0 or not -1.0 <= aug["fill"] <= 1.0:
        raise ValueError(f"method.memory_augmentation.translate={aug['translate']} must be >= 0 and fill={aug['fill']} a pixel value in [-1, 1]")
    return aug | {"scale": (float(low), float(high))}


class EverAnimate(AnimationSystem):
    """EverAnimate as a LightningModule: one chunk from identity and motion memory."""

    conditions = ()
    guidance_levels = ((),)  # no CFG (paper: 20 steps without guidance)
    uncached_latents = frozenset({"identity"})  # the views are augmented anew each draw
    rollout_strategy = "latent_carry"  # persistent latent propagation (animate.rollout)
    carries_memory = True

    def __init__(
        self,
        backbone: WanBackbone,
        optimizer,
        identity_views: int = 4,
        motion_latents: int = 1,
        first_chunk_probability: float = 0.2,
        reference_memory_probability: float = 0.05,
        motion_noise: float = 0.1,
        memory_augmentation: dict | None = None,
        restorative: dict | None = None,
        **kwargs,
    ):
        super().__init__(backbone, optimizer, **kwargs)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        if identity_views < 1 or motion_latents < 1:
            raise ValueError(f"method.identity_views={identity_views} and method.motion_latents={motion_latents}: each must be >= 1")
        if not all(0.0 <= p <= 1.0 for p in (first_chunk_probability, reference_memory_probability, motion_noise)):
            raise ValueError("method.first_chunk_probability, reference_memory_probability and motion_noise are probabilities / flow times in [0, 1]")
        self.identity_views, self.motion_latents = identity_views, motion_latents
        self.first_chunk_probability, self.motion_noise = first_chunk_probability, motion_noise
        self.reference_memory_probability = reference_memory_probability
        self.memory_augmentation = check_augmentation(MEMORY_AUGMENTATION_DEFAULTS | dict(memory_augmentation or {}))
        rfm = RESTORATIVE_DEFAULTS | dict(restorative or {})
        check_bell(rfm["amplitude"], rfm["mean"], rfm["std"], rfm["min_time"])
        restoration_coefficient(torch.zeros(1), rfm["amplitude"], rfm["mean"], rfm["std"], rfm["form"])  # checks the form
        self.restorative = rfm
        self.perturbation = DriftPerturbation(**dict(rfm["perturbation"]))
        if getattr(backbone.transformer, "pose_patch_embedding", None) is None:
            patch = backbone.compression
            self.pose_embedding = nn.Conv3d(backbone.latent_channels, backbone.dim, kernel_size=(patch.patch_time, patch.patch_space, patch.patch_space),
                                            stride=(patch.patch_time, patch.patch_space, patch.patch_space))
            nn.init.zeros_(self.pose_embedding.weight)  # at initialisation the backbone sees no pose
            nn.init.zeros_(self.pose_embedding.bias)
        else:
            self.pose_embedding = None

    @property
    def context_frames(self) -> int:
        """Latent frames in front of the target: K identity + L_m motion."""
        return self.identity_views + self.motion_latents

    # ----- inputs --------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict, augment: bool) -> dict:
        """Memory augmentation of the identity views (training draws only; the reference is left as it is)."""
        if not augment or "identity_memory" in batch or batch.get("reference_views") is None:
            return batch
        aug = self.memory_augmentation
        return batch | {"reference_views": augment_views(batch["reference_views"], aug["probability"], aug["scale"], aug["translate"], aug["fill"])}

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        inputs = {"pose": pose_pixels, "identity": identity_pixels}
        return inputs | {"video": video_pixels} if training else inputs

    def encode(self, batch: dict, inputs: dict[str, PixelFn]) -> dict[str, Tensor]:
        """The base encoding (without the identity views when the batch carries a frozen identity memory), and in
        restorative training draws the perturbed target ``perturbed``: P(x0) encoded for the clips P perturbs, x0's latents for the rest.
        """
        if "identity_memory" in batch:
            inputs = {name: fn for name, fn in inputs.items() if name != "identity"}
        latents = super().encode(batch, inputs)
        if "video" in latents and self.training and self.restorative["enabled"]:
            chosen = self.perturbation.chosen(batch["video"].shape[0]).to(latents["video"].device)
            perturbed = latents["video"].clone()
            if chosen.any():
                video = batch["video"][chosen]
                perturbed[chosen] = self.backbone.vae.encode(torch.stack([self.perturbation.perturb_clip(clip, None) for clip in video])).to(perturbed)
            latents["perturbed"] = perturbed
        return latents

    def identity_memory(self, batch: dict, latents: dict[str, Tensor], layout: str = "inference") -> Tensor:
        """(B, C, K, h, w): the batch's frozen identity memory, or its encoded views in ``layout``.

        ``inference`` (official order): K - 1 views, the reference last (and in the slots the views leave);
        ``training``: K views, the reference in the slots they leave; in a training draw, with
        ``reference_memory_probability`` per sample, the reference in every slot; ``reference``: the reference in every slot.
        """
        if "identity_memory" in batch:
            return batch["identity_memory"][:, :, : self.identity_views]
        b, k = batch["reference"].shape[0], self.identity_views
        encoded = latents["identity"][:, :, 0].unflatten(0, (b, -1)).transpose(1, 2)  # (B, C, 1 + V, h, w): the reference, then the views
        reference, views = encoded[:, :, :1], encoded[:, :, 1:]
        if layout == "reference":
            return reference.expand(-1, -1, k, -1, -1)
        if layout == "inference":
            return memory_slots(reference, views, k, k - 1)
        memory = memory_slots(reference, views, k, k)
        if not self.training:
            return memory
        alone = (torch.rand(b) < self.reference_memory_probability).to(memory.device)  # (B,)
        return torch.where(alone[:, None, None, None, None], reference.expand_as(memory), memory)

    def after_first_chunk(self, batch: dict, video: Tensor, seed: int) -> dict[str, Tensor]:
        """The frozen identity memory (inference layout): the given views, the missing ones drawn from the first chunk's frames (B, 3, T, H, W)."""
        given = views_of(batch)  # (B, 1 + V, 3, H, W): the reference, then the views
        missing = self.identity_views - given.shape[1]
        if missing > 0:
            generator = torch.Generator().manual_seed(seed)
            frames = 1 + torch.randperm(video.shape[2] - 1, generator=generator)[:missing].sort().values  # never frame 0
            drawn = video[:, :, frames].transpose(1, 2)  # (B, missing, 3, H, W)
            if drawn.shape[1] < missing:  # a first chunk shorter than the missing views: repeat its last
                drawn = torch.cat([drawn, drawn[:, -1:].expand(-1, missing - drawn.shape[1], -1, -1, -1)], dim=1)
            given = torch.cat([given, drawn.to(given)], dim=1)
        latents = self.backbone.vae.encode(given.flatten(0, 1)[:, :, None])  # each view encoded alone
        encoded = latents[:, :, 0].unflatten(0, (given.shape[0], -1)).transpose(1, 2)  # (B, C, 1 + V, h, w)
        return {"identity_memory": memory_slots(encoded[:, :, :1], encoded[:, :, 1:], self.identity_views, self.identity_views - 1)}

    def pose_tokens(self, pose_latents: Tensor) -> Tensor:
        """(B, L_target, D) pose tokens of the target frames' pose latents (B, C, F, h, w)."""
        embedding = self.pose_embedding if self.pose_embedding is not None else self.backbone.transformer.pose_patch_embedding
        return embedding(pose_latents.to(embedding.weight.dtype)).flatten(2).transpose(1, 2)

    # ----- the sequence --------------------------------------------------------------------------
    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        identity = self.identity_memory(batch, latents, "training" if training else "inference")  # (B, C, K, h, w)
        b, c, _, h, w = identity.shape
        pose, perturbed = latents["pose"], latents.get("perturbed")
        if training:
            video = latents["video"]
            fits = video.shape[2] >= self.motion_latents + 2
            # training draws the chunk's role; the validation loss always scores a continuation chunk
            continuation = fits and (not self.training or bool(torch.rand(()) >= self.first_chunk_probability))
            if continuation:  # memory = the clip's latent frames 1 : 1 + L_m, target = the rest
                cut = 1 + self.motion_latents
                motion, target, pose = video[:, :, 1:cut], video[:, :, cut:], pose[:, :, cut:]
                perturbed = None if perturbed is None else perturbed[:, :, cut:]
                motion = self.perturb_motion(motion)
            else:  # as the first chunk of a long video: no motion memory, and only the reference (the other views come from this chunk)
                motion, target = video.new_zeros(b, c, self.motion_latents, h, w), video
                identity = self.identity_memory(batch, latents, "reference")
        else:
            memory = batch.get("motion_memory")
            motion = identity.new_zeros(b, c, self.motion_latents, h, w) if memory is None else memory.to(identity)
            if motion.shape[2] != self.motion_latents:
                raise ValueError(f"motion_memory has {motion.shape[2]} latent frames; method.motion_latents is {self.motion_latents}")
            pose = pose[:, :, batch.get("pose_lead_latents", 0) :]  # a continuation chunk's poses start at the memory's frames
            target = torch.zeros_like(pose)
        n, f = self.context_frames, target.shape[2]
        clean = torch.cat([identity.to(target), motion.to(target), target], dim=2)
        generate = torch.zeros(b, n + f, dtype=torch.bool, device=clean.device)
        generate[:, n:] = True
        loss_weight = generate[:, None, :, None, None].float().expand(b, 1, n + f, h, w).clone()
        loss_weight[:, :, n:] *= self.region_weight(batch, (h, w))[:, :, -f:]
        pose_tokens = self.pose_tokens(pose)  # (B, L_target, D)
        context_tokens = pose_tokens.new_zeros(b, pose_tokens.shape[1] // f * n, pose_tokens.shape[2])
        animate = wan.is_animate(self.backbone.transformer)
        return EverAnimateSequence(
            clean=clean,
            generate=generate,
            loss_weight=loss_weight,
            target=slice(n, n + f),
            injections={-1: torch.cat([context_tokens, pose_tokens], dim=1)},
            channel_cond=self.memory_condition(clean, n) if animate else None,
            perturbed=None if perturbed is None else torch.cat([clean[:, :, :n], perturbed.to(clean)], dim=2),
            face_motion=self.face_motion(batch, n, f) if animate else None,
        )

    def memory_condition(self, clean: Tensor, n: int) -> Tensor:
        """Wan-Animate's channel conditioning (B, 4 + C, F, h, w): mask 1 and the clean latents on the n memory frames, zeros on the target."""
        b, c, frames, h, w = clean.shape
        known = torch.zeros(b, ANIMATE_MASK_CHANNELS + c, frames, h, w, dtype=clean.dtype, device=clean.device)
        known[:, :ANIMATE_MASK_CHANNELS, :n] = 1
        known[:, ANIMATE_MASK_CHANNELS:, :n] = clean[:, :, :n]
        return known

    def face_motion(self, batch: dict, n: int, f: int) -> Tensor | None:
        """Face motion tokens (B, n + f, N + 1, D): zeros on the memory frames, then the target frames' (None without driving frames and keypoints)."""
        frames = batch.get("driving", batch.get("video"))
        if frames is None or batch.get("keypoints") is None:
            return None
        transformer = self.backbone.transformer
        crops = face_crops(frames, batch["keypoints"], transformer.config.motion_encoder_size)
        motion = face_motion_tokens(transformer, crops, lead_frames=0)  # (B, latent frames of the clip, N + 1, D)
        return torch.cat([motion.new_zeros(motion.shape[0], n, *motion.shape[2:]), motion[:, -f:]], dim=1)

    def forward(self, seq: EverAnimateSequence, latents: Tensor, t: Tensor) -> Tensor:
        """The backbone's velocity; on an Animate backbone with face motion, its face adapter runs after every n-th block."""
        packed = seq.packed(latents, t)
        if seq.face_motion is not None:
            packed.block_hook = FaceAdapterHook(self.backbone.transformer, seq.face_motion)
        return self.backbone(packed)

    def perturb_motion(self, motion: Tensor) -> Tensor:
        """Stage 1's motion-memory perturbation: noised to a flow time drawn in [0, motion_noise] per clip."""
        if self.motion_noise == 0 or not self.training:
            return motion
        s = torch.rand(motion.shape[0], 1, device=motion.device) * self.motion_noise
        return interpolate(motion, torch.randn_like(motion), s.expand(-1, motion.shape[2]))

    # ----- restorative flow matching ------------------------------------------------------------
    def flow_pair(self, seq: EverAnimateSequence, noise: Tensor, t: Tensor) -> FlowPair:
        """Plain flow matching, or RFM on the perturbed target when ``restorative.enabled``: only samples at t >= ``min_time`` are restored."""
        if not self.restorative["enabled"] or seq.perturbed is None:
            return super().flow_pair(seq, noise, t)
        rfm = self.restorative
        restored = (t >= rfm["min_time"])[:, None, None, None, None]  # (B, 1, 1, 1, 1): the official rand_aug_sigma_threshold
        perturbed = torch.where(restored, seq.perturbed, seq.clean)  # x0~ = x0 below it: plain flow matching
        t_frames = seq.frame_times(t)  # (B, F), 0 on memory frames
        coefficient = restoration_coefficient(t_frames, rfm["amplitude"], rfm["mean"], rfm["std"], rfm["form"], rfm["normalised"])
        x_t = interpolate(perturbed, noise, t_frames)
        return FlowPair(x_t, t_frames, restorative_target(seq.clean, perturbed, noise, coefficient), seq.loss_weight)
