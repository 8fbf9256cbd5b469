"""One-to-All Animation ("One-to-All Animation: Alignment-Free Character Animation and Image Pose Transfer") as a LightningModule.

Where each idea lives:
- Outpainting training: :meth:`OneToAll.prepare_batch` masks the reference around its face
  (:func:`common.pose.augment.outpainting_mask`); at inference the pose-guided translation
  (:mod:`common.pose.translate`) gives the pad mask in ``batch["reference_mask"]``.
- Reference Extractor: :mod:`animate.modules.reference_extractor` (masked reference latent + mask
  latent on channels, M text-free blocks, M + 1 zero-initialised projections; block i reads
  feature i // n).
- HRFA: :mod:`animate.modules.hrfa`, the self-attention processor every block runs.
  ``reference_extractor=false`` removes both (the ablation against the I2V backbone's first-frame
  prior, Fig. 8): the reference then enters only as the latent frame in front.
- Identity-robust pose control: face region enhancement in the data pipeline
  (``data.face_enhancement``, :func:`common.pose.augment.enhance_face`, drawn lightened;
  ``data.lightened_poses`` is the inference switch); reference-guided pose control in
  :mod:`animate.modules.pose_control`, added after block 0, with the reference latent in front
  of the video latents along time (``reference_prefix``). Table 3's rows without it keep a pose
  path (``pose_control.style=driving``: the driving poses alone, added to the noisy tokens).
- Token replace: training keeps the first ``context_latents`` target latent frames clean (t = 0)
  and out of the loss with probability ``token_replace.probability``; long videos are generated
  segment by segment (:mod:`animate.rollout`, strategy ``token_replace``), each segment's first latent frames the
  VAE encoding of the previous segment's last frames, held at t = 0 at every step.
- Cumulative CFG (Eq. 16): three levels (nothing, pose, pose + reference); ``sampler.guidance:
  [lP, lI]``, 1, 2 or 3 batched passes per step (:func:`animate.flow.guided_velocity`).
- The three training stages: ``trainable`` names the parameter groups a stage trains
  (conf/onetoall_stage1.yaml ... stage3.yaml, each ``init_from`` the previous run).
- The official code's form, as switches (docs/ONE_TO_ALL.md): ``extractor_timestep``,
  ``reference_prefix=encoded`` with ``prefix_time=noisy``, ``pose_control.style=controlnet``;
  ``official_checkpoint`` loads a released checkpoint into it (:data:`animate.weights.ONE_TO_ALL_KEY_MAP`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from animate.backbone import WanBackbone
from animate.methods.base import IMAGE_TOKENS, AnimationSystem, LatentSequence, PixelFn, keep_samples, video_pixels
from animate.modules.hrfa import install_hrfa
from animate.modules.pose_control import ControlNetPoseBranch, DrivingPoseControl, ReferenceGuidedPoseControl
from animate.modules.reference_extractor import ReferenceExtractor, ReferencePrefixEncoder
from common.pose.augment import outpainting_mask

REFERENCE_PREFIXES = ("latent", "encoded", "none")  # Eq. 11's reference latent | the official code's learned encoding | no prefix
PREFIX_TIMES = ("clean", "noisy")  # the prefix frame's modulation: t = 0 (a clean frame) | the denoising t (official code)
POSE_STYLES = ("paper", "controlnet", "driving")  # reference-guided (Sec. 3.3) | the official code's | driving poses alone, added to the noisy tokens (Table 3's base rows)


@dataclass
class OneToAllSequence(LatentSequence):
    """The latent sequence plus what One-to-All's forward computes per step (all batch-first, None when unused)."""

    reference_input: Tensor | None = None  # (B, 2C, 1, h, w) for a timestep-conditioned extractor
    reference_kept: Tensor | None = None  # (B,) 1 = reference condition kept, 0 = dropped
    pose_tokens: Tensor | None = None  # (B, L, D) for the ControlNet-style pose branch
    pose_scale: Tensor | None = None  # (B,) its conditioning scale: 0 where the pose is dropped
    prefix_frames: int = 0  # frames in front of the target (the reference prefix)


TRAINABLE_GROUPS = ("reference_extractor", "reference_kv", "attention_output", "pose_control", "self_attention", "patch_embedding", "backbone")

# The constructor's defaults are conf/method/onetoall.yaml's (tests/test_onetoall.py compares them): the config is their one source.
POSE_CONTROL_DEFAULTS = dict(enabled=True, style="paper", blocks=2, channels=8, blocks_per_stage=[0, 1, 1, 1], groups=4)
OUTPAINTING_DEFAULTS = dict(probability=0.5, height_range=[2.0, 8.0], width_range=[2.0, 6.0], threshold=0.3)
TOKEN_REPLACE_DEFAULTS = dict(probability=0.2, context_latents=2, segment_frames=17)
REFERENCE_NOISE_DEFAULTS = dict(probability=0.0, log_sigma_mean=-3.0, log_sigma_std=0.5)
CONDITION_DROPOUT_DEFAULTS = dict(both=0.1, reference=0.1, pose=0.2)


def in_group(name: str, group: str) -> bool:
    """Whether the parameter ``name`` of a :class:`OneToAll` belongs to a trainable group."""
    in_transformer = name.startswith("backbone.transformer.")
    hrfa = ".attn1.processor." in name  # W'k, W'v and K''s norm
    return {
        "reference_extractor": name.startswith(("reference_extractor.", "reference_prefix_encoder.")),
        "reference_kv": in_transformer and hrfa,
        "attention_output": in_transformer and ".attn1.to_out." in name,  # W_o, which HRFA's two outputs share (official stage 1 trains it)
        "pose_control": name.startswith("pose_control."),
        "self_attention": in_transformer and ".attn1." in name and not hrfa,  # W_q, W_k, W_v, W_o and norms: the rest of HRFA
        "patch_embedding": name.startswith("backbone.transformer.patch_embedding."),  # official stages 2-3 train it
        "backbone": in_transformer,
    }[group]


def official_condition_drops(batch_size: int, both: float, reference: float, pose: float, device=None) -> dict[str, Tensor]:
    """The official code's dropout: one draw drops pose and reference together (``both``) or the reference alone; the pose alone then drops at ``pose``.

    Realised shares: no conditions ``both``; pose only ``reference``; reference only ``(1 - both - reference) pose``; both kept the rest.
    """
    u = torch.rand(batch_size, device=device)  # (B,)
    drop_both = u < both
    drop_reference = (u >= both) & (u < both + reference)
    drop_pose = ~drop_both & ~drop_reference & (torch.rand(batch_size, device=device) < pose)
    return {"pose": drop_both | drop_pose, "reference": drop_both | drop_reference}


def mask_reference_pose(reference_pose: Tensor, mask: Tensor) -> Tensor:
    """The pose of the masked reference (Sec. 3.3): the masked area (mask 1) drawn empty, black in [-1, 1]; (B, 3, H, W)."""
    return torch.where(mask > 0.5, torch.full_like(reference_pose, -1.0), reference_pose)


def official_reference_noise(reference: Tensor, mask: Tensor, log_sigma_mean: float, log_sigma_std: float) -> Tensor:
    """The official code's reference noise: Gaussian noise of std exp(exp(N(mean, std))) per sample on the kept area; (B, 3, H, W).

    The official ``GaussianNoiseAdder`` applies ``exp`` twice, so at (-3, 0.5) the std is about 1.05 on [-1, 1] pixels.
    """
    log_sigma = torch.normal(log_sigma_mean, log_sigma_std, size=(reference.shape[0],), device=reference.device)
    sigma = torch.exp(torch.exp(log_sigma).clamp(min=1e-6)).to(reference.dtype)
    return reference + torch.randn_like(reference) * sigma[:, None, None, None] * (mask < 0.5)


def masked_reference_pixels(batch: dict) -> Tensor:
    """The reference with its masked area zeroed (B, 3, 1, H, W)."""
    return (batch["reference"] * (1 - batch["reference_mask"]))[:, :, None]


def reference_mask_pixels(batch: dict) -> Tensor:
    """The mask (1 = masked) as a 3-channel frame in [-1, 1] (B, 3, 1, H, W), for the VAE."""
    return (batch["reference_mask"] * 2 - 1).expand(-1, 3, -1, -1)[:, :, None]


class OneToAll(AnimationSystem):
    """One-to-All Animation as a LightningModule."""

    conditions = ("pose", "reference")
    guidance_levels = ((), ("pose",), ("pose", "reference"))  # Eq. 16: x_0, x_P, x_RP
    uncached_latents = frozenset({"reference", "reference_mask", IMAGE_TOKENS})  # the outpainting mask is redrawn every step

    def __init__(
        self,
        backbone: WanBackbone,
        optimizer,
        reference_extractor: bool = True,
        extractor_blocks: int = 2,
        extractor_timestep: bool = False,
        query_rope: str = "frame0",
        reference_prefix: str = "latent",
        prefix_time: str = "clean",
        pose_control: dict | None = None,
        outpainting: dict | None = None,
        token_replace: dict | None = None,
        reference_noise: dict | None = None,
        trainable: Sequence[str] = TRAINABLE_GROUPS,
        official_checkpoint: str | None = None,
        **kwargs,
    ):
        if backbone.in_channels != backbone.latent_channels:
            raise ValueError(f"One-to-All adds no input channels: backbone.transformer.in_channels must be {backbone.latent_channels}, got {backbone.in_channels}")
        unknown = set(trainable) - set(TRAINABLE_GROUPS)
        if unknown:
            raise ValueError(f"method.trainable names unknown groups {sorted(unknown)}: use {', '.join(TRAINABLE_GROUPS)}")
        lora = kwargs.get("lora") or {}
        if lora.get("rank") and {"backbone", "self_attention"} & set(trainable):
            raise ValueError("with LoRA (method.lora.rank > 0) the backbone's own weights stay frozen: drop backbone and self_attention from method.trainable")
        if isinstance(reference_prefix, bool):  # runs configured before the encoded prefix existed
            reference_prefix = "latent" if reference_prefix else "none"
        if reference_prefix not in REFERENCE_PREFIXES or prefix_time not in PREFIX_TIMES:
            raise ValueError(f"method.reference_prefix={reference_prefix!r} / prefix_time={prefix_time!r}: use one of {REFERENCE_PREFIXES} / {PREFIX_TIMES}")
        pose_cfg = POSE_CONTROL_DEFAULTS | dict(pose_control or {})
        if pose_cfg["style"] not in POSE_STYLES:
            raise ValueError(f"method.pose_control.style={pose_cfg['style']!r}: use one of {', '.join(POSE_STYLES)}")
        if not reference_extractor and reference_prefix == "none":
            raise ValueError("method.reference_extractor=false with reference_prefix=none leaves no path for the reference: keep one")
        # built from the backbone's blocks before LoRA wraps them (AnimationSystem.__init__)
        extractor = ReferenceExtractor(backbone, extractor_blocks, timestep=extractor_timestep) if reference_extractor else None
        prefix_encoder = None
        if reference_prefix == "encoded":
            prefix_encoder = ReferencePrefixEncoder(2 * backbone.latent_channels, backbone.latent_channels, groups=pose_cfg["groups"])
        control = None
        if pose_cfg["enabled"] and pose_cfg["style"] == "paper":
            control = ReferenceGuidedPoseControl(backbone, pose_cfg["channels"], pose_cfg["blocks_per_stage"], pose_cfg["groups"])
        elif pose_cfg["enabled"] and pose_cfg["style"] == "driving":
            control = DrivingPoseControl(backbone, pose_cfg["channels"], pose_cfg["blocks_per_stage"], pose_cfg["groups"])
        elif pose_cfg["enabled"]:
            control = ControlNetPoseBranch(backbone, pose_cfg["blocks"], pose_cfg["channels"], pose_cfg["groups"])
        if extractor is not None:  # without it the reference enters only as the frame in front (the I2V backbone's first-frame prior)
            install_hrfa(backbone.transformer, extractor.feature_of_block, query_rope)
        dropout = CONDITION_DROPOUT_DEFAULTS | dict(kwargs.pop("condition_dropout", None) or {})
        if set(dropout) != set(CONDITION_DROPOUT_DEFAULTS) or dropout["both"] + dropout["reference"] > 1:
            raise ValueError(f"method.condition_dropout={dropout}: One-to-All takes both, reference and pose (one draw drops both or the reference alone, "
                             "both + reference <= 1; then the pose alone drops at pose)")
        super().__init__(backbone, optimizer, **kwargs)
        self.condition_dropout = dropout
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        self.reference_extractor = extractor
        self.reference_prefix_encoder = prefix_encoder
        self.pose_control = control
        self.reference_prefix = reference_prefix
        self.prefix_time = prefix_time
        self.outpainting = OUTPAINTING_DEFAULTS | dict(outpainting or {})
        self.token_replace = TOKEN_REPLACE_DEFAULTS | dict(token_replace or {})
        self.reference_noise = REFERENCE_NOISE_DEFAULTS | dict(reference_noise or {})
        self.outpainting_without_face = 0  # training references whose face was not found: used whole (documented fallback)
        self.set_trainable(trainable, lora_active=bool(lora.get("rank")))
        if official_checkpoint:
            if lora.get("rank"):
                raise ValueError("method.official_checkpoint loads full weights: set method.lora.rank=0 (add LoRA in a later stage with init_from)")
            from animate.weights import load_one_to_all_checkpoint

            load_one_to_all_checkpoint(self, official_checkpoint)

    def sample_drops(self, batch_size: int) -> dict[str, Tensor]:
        """Training-time condition dropout, the official code's single draw (:func:`official_condition_drops`)."""
        return official_condition_drops(batch_size, **self.condition_dropout, device=self.device)

    def set_trainable(self, groups: Sequence[str], lora_active: bool) -> None:
        """Train the parameters of ``groups`` (and LoRA adapters); freeze the rest."""
        for name, parameter in self.named_parameters():
            adapter = lora_active and "lora_" in name
            parameter.requires_grad_(adapter or any(in_group(name, group) for group in groups))

    # ----- inputs ------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict, augment: bool) -> dict:
        """Add ``reference_mask`` (B, 1, H, W), 1 = masked (face-centred random masking when augmenting, else none unless given);
        mask the reference pose with it; when augmenting, add the official reference noise to ``reference_noise.probability`` of samples."""
        mask = batch["reference_mask"] if "reference_mask" in batch else self.outpainting_masks(batch, augment)
        batch = batch | {"reference_mask": mask}
        if "reference_pose" in batch:
            batch["reference_pose"] = mask_reference_pose(batch["reference_pose"], mask)
        if augment and self.reference_noise["probability"] > 0:
            noisy = torch.rand(mask.shape[0], device=mask.device) < self.reference_noise["probability"]  # (B,)
            noised = official_reference_noise(batch["reference"], mask, self.reference_noise["log_sigma_mean"], self.reference_noise["log_sigma_std"])
            batch["reference"] = torch.where(noisy[:, None, None, None], noised, batch["reference"])
        return batch

    def outpainting_masks(self, batch: dict, augment: bool) -> Tensor:
        """(B, 1, H, W) outpainting masks, 1 = masked: face-centred random boxes on ``outpainting.probability`` of samples when augmenting, else none."""
        reference = batch["reference"]
        b, _, height, width = reference.shape
        mask = torch.zeros(b, 1, height, width)
        if augment and self.outpainting["probability"] > 0:
            if "reference_keypoints" not in batch:
                raise ValueError("One-to-All's outpainting training masks the reference around its face and needs batch['reference_keypoints']; "
                                 "set method.outpainting.probability=0 to train without it")
            keypoints = batch["reference_keypoints"].cpu().numpy()
            for i in range(b):
                if torch.rand(()) >= self.outpainting["probability"]:
                    continue
                rng = np.random.default_rng(int(torch.randint(2**31, ())))
                drawn = outpainting_mask(keypoints[i], height, width, rng, tuple(self.outpainting["height_range"]),
                                         tuple(self.outpainting["width_range"]), self.outpainting["threshold"])
                if drawn is None:
                    self.outpainting_without_face += 1
                    continue
                mask[i, 0] = torch.from_numpy(drawn)
            if self._trainer is not None:
                self.log("train/outpainting_without_face", float(self.outpainting_without_face), batch_size=b)
        return mask.to(reference)

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        inputs = {"reference": masked_reference_pixels, "reference_mask": reference_mask_pixels}
        return {"video": video_pixels, **inputs} if training else inputs

    # ----- the sequence ------------------------------------------------------------------------
    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        reference = latents["reference"]  # (B, C, 1, h, w)
        b, c, _, h, w = reference.shape
        frames = self.target_latent_shape(batch)[1]
        target = latents["video"] if training else reference.new_zeros(b, c, frames, h, w)
        patch = self.backbone.compression.patch_space
        grid_h, grid_w = h // patch, w // patch
        device = reference.device
        # the reference: HRFA's features (B, M + 1, Lr, D) (per step when they depend on t) and the frame in front
        kept = (~drop["reference"]).to(reference.dtype)  # (B,)
        reference_input = torch.cat([reference, latents["reference_mask"]], dim=1)  # (B, 2C, 1, h, w)
        attention_kwargs = {}
        per_step = self.reference_extractor is not None and self.reference_extractor.timestep
        if self.reference_extractor is not None and not per_step:
            states = self.reference_extractor(reference_input, self.reference_rotary(reference_input))
            attention_kwargs["reference_states"] = keep_samples(states, drop["reference"])
        prefix = []
        if self.reference_prefix == "latent":
            prefix = [keep_samples(reference, drop["reference"])]
        elif self.reference_prefix == "encoded":
            prefix = [keep_samples(self.reference_prefix_encoder(reference_input), drop["reference"])]
        n_ref = len(prefix)
        clean = torch.cat([*prefix, target], dim=2)  # (B, C, n_ref + F, h, w)
        total = n_ref + frames
        generate = torch.ones(b, total, dtype=torch.bool, device=device)
        generate[:, :n_ref] = False
        loss_weight = reference.new_zeros(b, 1, total, h, w)
        loss_weight[:, :, n_ref:] = self.region_weight(batch, (h, w)).to(loss_weight)
        if training and self.token_replace["probability"] > 0 and frames > self.token_replace["context_latents"]:  # not on images
            replaced = torch.rand(b, device=device) < self.token_replace["probability"]  # (B,)
            context = slice(n_ref, n_ref + self.token_replace["context_latents"])
            generate[replaced, context] = False  # clean ground-truth context at t = 0 ...
            loss_weight[replaced, :, context] = 0.0  # ... and out of the loss
        frame_ids = torch.arange(total, device=device).expand(b, total)
        injections, pose_tokens, pose_scale = {}, None, None
        if self.pose_control is not None:
            reference_pose = batch["reference_pose"] if n_ref else None
            pose_kept = (~drop["pose"]).to(reference.dtype)
            if isinstance(self.pose_control, DrivingPoseControl):  # the driving frames' tokens only; the frames in front get none
                tokens = self.pose_control(batch["pose"])  # (B, F h w, D)
                tokens = torch.cat([tokens.new_zeros(b, n_ref * grid_h * grid_w, tokens.shape[-1]), tokens], dim=1)
                injections[-1] = keep_samples(tokens, drop["pose"])  # added to the noisy latent's tokens before block 0
            elif isinstance(self.pose_control, ControlNetPoseBranch):
                pose_tokens, pose_scale = self.pose_control.tokens(reference_pose, batch["pose"]), pose_kept  # scale 0: no control at all
            else:
                tokens = self.pose_control(reference_pose, batch["pose"], self.backbone.rotary(frame_ids, grid_h, grid_w))
                injections[0] = keep_samples(tokens, drop["pose"])  # added to the output of the first block
        return OneToAllSequence(
            clean=clean,
            generate=generate,
            loss_weight=loss_weight,
            target=slice(n_ref, total),
            frame_ids=frame_ids,
            injections=injections,
            attention_kwargs=attention_kwargs,
            reference_input=reference_input if per_step else None,
            reference_kept=kept if per_step else None,
            pose_tokens=pose_tokens,
            pose_scale=pose_scale,
            prefix_frames=n_ref,
        )

    def forward(self, seq: OneToAllSequence, latents: Tensor, t: Tensor) -> Tensor:
        """The backbone's velocity, with the per-step parts: a timestep-conditioned extractor, the prefix's time, the ControlNet branch."""
        packed = seq.packed(latents, t)
        sample_t = t.amax(dim=1)  # (B,) the denoising time of each sample (held frames are at 0)
        if self.prefix_time == "noisy" and seq.prefix_frames:
            packed.t = torch.cat([sample_t[:, None].expand(-1, seq.prefix_frames), t[:, seq.prefix_frames :]], dim=1)
        if seq.reference_input is not None:
            states = self.reference_extractor(seq.reference_input, self.reference_rotary(seq.reference_input), sample_t)
            packed.attention_kwargs = {"reference_states": states * seq.reference_kept[:, None, None, None]}
        if seq.pose_tokens is not None:
            packed.block_hook = self.pose_control.hook(seq.pose_tokens, seq.pose_scale)
        return self.backbone(packed)

    def reference_rotary(self, reference_input: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE of the reference's token grid at frame 0, for latents (B, 2C, 1, h, w)."""
        b, _, _, h, w = reference_input.shape
        patch = self.backbone.compression.patch_space
        return self.backbone.rotary(torch.zeros(b, 1, dtype=torch.long, device=reference_input.device), h // patch, w // patch)

    # ----- long videos -------------------------------------------------------------------------
    def rollout_defaults(self) -> dict:
        """Token replace over segments of ``token_replace.segment_frames`` (animate.rollout), then ``rollout`` from the config."""
        carry = self.backbone.compression.pixel_frames(self.token_replace["context_latents"])
        return {"strategy": "token_replace", "chunk_frames": self.token_replace["segment_frames"], "carry_frames": carry} | self.rollout
